"""Config schemas, validation, hashing and run-directory lookup shared by every stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key."""


def schemas() -> dict[str, type]:
    """Config node name -> its dataclass schema, gathered from gpt4all.core.schema.*."""
    from gpt4all.core.schema import collect, curate, evaluate, quantize, runs, train

    out: dict[str, type] = {}
    for module in (collect, curate, train, quantize, evaluate, runs):
        out.update(module.SCHEMAS)
    return out


def validate(cfg: DictConfig) -> DictConfig:
    """Check every known config node against its schema; unknown keys and wrong types raise ConfigError."""
    for key, schema in schemas().items():
        if key not in cfg:
            continue
        node = cfg[key]
        target = None
        if not isinstance(schema, type):  # a function of the node, e.g. the class its _target_ names
            try:
                schema = schema(node)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            target = node.get("_target_")
            node = OmegaConf.masked_copy(node, [k for k in node if k != "_target_"])
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        except OmegaConfBaseException as err:
            bad = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
            allowed = ", ".join(sorted(schema.__dataclass_fields__))
            raise ConfigError(
                f"invalid config at '{key}.{bad}': {str(err).splitlines()[0]}\n"
                f"  keys allowed in '{key}': {allowed}"
            ) from None
        with_flag = OmegaConf.is_struct(cfg)
        OmegaConf.set_struct(cfg, False)
        if target is not None:
            merged = OmegaConf.merge({"_target_": target}, OmegaConf.to_container(merged))
        cfg[key] = merged
        OmegaConf.set_struct(cfg, with_flag)
        missing = OmegaConf.missing_keys(cfg[key])
        if missing:
            raise ConfigError(f"config '{key}' is missing required keys: {', '.join(f'{key}.{m}' for m in sorted(missing))}")
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, without Hydra's own node."""
    node = cfg.copy()
    with open_dict(node):
        node.pop("hydra", None)
    return OmegaConf.to_container(node, resolve=True)


def config_hash(cfg: DictConfig | dict) -> str:
    """A short, stable hash of the resolved config (what a reviewer compares to see if two runs match)."""
    data = cfg if isinstance(cfg, dict) else to_container(cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def latest_run(output_dir: str | Path, stage: str) -> Path:
    """The most recent finished run of `stage` under `output_dir` (standalone or inside a pipeline run)."""
    root = Path(output_dir)
    candidates = [m.parent for m in root.glob(f"{stage}/*/manifest.json")]
    candidates += [m.parent for m in root.glob(f"pipeline/*/{stage}/manifest.json")]
    if not candidates:
        raise FileNotFoundError(
            f"no finished '{stage}' run under {root}: run gpt4all-{stage} first or pass the directory explicitly"
        )
    return max(candidates, key=lambda p: (p / "manifest.json").stat().st_mtime)
