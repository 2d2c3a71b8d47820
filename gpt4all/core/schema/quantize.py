"""Schemas of the quantize stage's nodes: `quant` and `quantize`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class QuantSchema:
    name: str = "???"
    method: str = "gguf"  # gguf | none
    export_dtype: str = "f16"  # f16 | f32
    ftype: Optional[str] = "q4_0"
    smoke_prompt: str = "What is the capital of France?"
    smoke_max_tokens: int = 24
    n_threads: int = 1


@dataclass
class QuantizeSchema:
    model_dir: Optional[str] = None  # a train run dir; null: the latest one


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "quant": QuantSchema,
    "quantize": QuantizeSchema,
}
