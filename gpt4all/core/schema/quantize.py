"""Schemas of the quantize stage's nodes: `quant` (the scheme class named by its `_target_` is its own schema,
see gpt4all.quantize.schemes) and `quantize`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def quant_schema(node: Any, where: str = "quant") -> type:
    """The scheme class a `quant` node names with `_target_`: its dataclass fields are the allowed keys."""
    from hydra.utils import get_class

    target = node.get("_target_") if hasattr(node, "get") else None
    if not target:
        raise ValueError("config 'quant' has no _target_: name a scheme class (see conf/quant/*.yaml)")
    try:
        return get_class(str(target))
    except Exception as err:  # noqa: BLE001 - hydra wraps import errors in several types
        raise ValueError(f"quant._target_={target}: cannot import the scheme class ({err})") from None


@dataclass
class QuantizeSchema:
    model_dir: str | None = None  # a train run dir; null: the latest one
    max_kld: float | None = None  # quality gate: fail when the mean KLD to the reference exceeds it
    kld_examples: int = 8  # curated pairs the stage measures its own KLD on (0: skip unless max_kld is set)
    kld_max_length: int = 256  # tokens per scored pair


# config node -> schema (or a function of the node giving it); gpt4all.core.config validates every node listed
SCHEMAS: dict[str, Any] = {
    "quant": quant_schema,
    "quantize": QuantizeSchema,
}
