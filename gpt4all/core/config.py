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


def check_top_level(cfg: DictConfig) -> None:
    """Every top-level key is a node with a schema or a known plain key of the right type (`+seed2=1` fails)."""
    from gpt4all.core.schema.runs import TOP_LEVEL

    known = set(schemas()) | set(TOP_LEVEL)
    for key in cfg:
        if key not in known:
            raise ConfigError(f"invalid config: unknown top-level key '{key}'\n  top-level keys allowed: "
                              f"{', '.join(sorted(known))}")
        kind = TOP_LEVEL.get(key)
        value = OmegaConf.select(cfg, str(key), throw_on_missing=False)
        if kind is not None and value is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
            raise ConfigError(f"invalid config at '{key}': expected {kind.__name__}, got {type(value).__name__} {value!r}")


def check_targets(cfg: DictConfig, nodes: tuple[str, ...] = ("trainer", "callbacks")) -> None:
    """Keys of the free-form `_target_` nodes (trainer, each callback) must be arguments of their target."""
    import inspect

    from hydra.utils import get_class

    def check(path: str, node: Any) -> None:
        if not isinstance(node, DictConfig):
            return
        if "_target_" in node:
            try:
                params = inspect.signature(get_class(node._target_)).parameters
            except Exception as err:  # noqa: BLE001 - any import or lookup failure names the node
                raise ConfigError(f"invalid config at '{path}._target_': cannot import {node._target_} ({err})") from None
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                for key in node:
                    if not str(key).startswith("_") and key not in params:
                        raise ConfigError(f"invalid config at '{path}.{key}': not an argument of {node._target_}\n"
                                          f"  arguments allowed: {', '.join(k for k in params if k != 'self')}")
            for key in node:
                if isinstance(node.get(key), DictConfig):
                    check(f"{path}.{key}", node.get(key))
        else:
            for key in node:
                check(f"{path}.{key}", node.get(key))

    for name in nodes:
        if name in cfg:
            check(name, cfg[name])


def validate(cfg: DictConfig) -> DictConfig:
    """Check the top-level keys and every known config node against its schema; unknown keys and wrong types
    raise ConfigError naming the key. The train stage and the pipeline also check trainer and callbacks keys."""
    check_top_level(cfg)
    if cfg.get("stage") in ("train", "pipeline"):
        check_targets(cfg)
    for key, schema in schemas().items():
        if key not in cfg:
            continue
        node = cfg[key]
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
