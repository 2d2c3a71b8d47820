"""Config schemas, validation, hashing and run-directory lookup shared by every stage."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

# The repo's conf/ ships inside the package as `gpt4all.conf` (pyproject: package-dir mapping), so a wheel and an
# editable install find it the same way; Hydra reads it as `pkg://gpt4all.conf`.
CONF_PACKAGE = "gpt4all.conf"
CONF_PATH = f"pkg://{CONF_PACKAGE}"


def conf_dir() -> Path:
    """The shipped config tree on disk (conf/ in a checkout, site-packages/gpt4all/conf in a wheel)."""
    return Path(str(importlib.resources.files(CONF_PACKAGE)))


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key."""


# Keys renamed when their node became a `_target_` node (old dotted key -> new one); the old one fails naming it.
RENAMED = {"lora.alpha": "lora.lora_alpha", "lora.dropout": "lora.lora_dropout"}
HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}


def check_renamed(overrides: Iterable[str]) -> None:
    """Command-line overrides (`lora.alpha=32`, `+lora.alpha=32`) that use a renamed key fail naming the new one."""
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in RENAMED:
            raise ConfigError(f"'{key}' was renamed: use {RENAMED[key]}={value}" if value else
                              f"'{key}' was renamed: use {RENAMED[key]}")


def check_target_node(node: Any, where: str, extra: tuple[str, ...] = ()) -> None:
    """Keys and simple types of a `_target_` node against its target's parameters (Hydra checks neither until it
    instantiates, after heavy work): an unknown key, a renamed key or a wrong bool/int/float/str type raises
    ConfigError naming `where.key`. `extra` lists keys gpt4all-lab itself reads from the node."""
    import importlib
    import inspect

    target = str(node["_target_"])
    module, _, name = target.rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{where}._target_: cannot import {target} ({err})") from None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in node.items():
        key = str(key)
        if key in HYDRA_KEYS or key in extra:
            continue
        if f"{where}.{key}" in RENAMED:
            raise ConfigError(f"'{where}.{key}' was renamed: use {RENAMED[f'{where}.{key}']}")
        p = params.get(key)
        if p is None:
            if takes_any:
                continue
            allowed = ", ".join(k for k in params if not k.startswith("_"))
            raise ConfigError(f"invalid config at '{where}.{key}': {target} takes no '{key}'\n"
                              f"  keys allowed in '{where}': {allowed}")
        if value is None or p.default is None or not isinstance(p.default, (bool, int, float, str)):
            continue
        want = type(p.default)
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (want is int and isinstance(value, bool)):
            raise ConfigError(f"invalid config at '{where}.{key}': expected {want.__name__}, got {value!r}")


def schemas() -> dict[str, type | Callable[[Any, str], type | None]]:
    """Config node name -> its dataclass schema (or a check of a `_target_` node), from gpt4all.core.schema.*."""
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
        target = None
        if not isinstance(schema, type):  # a `_target_` node: a check of it (None: done) or the class it names
            try:
                schema = schema(node, key)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            if schema is None:
                continue
            target = node.get("_target_")
            node = OmegaConf.masked_copy(node, [k for k in node if k != "_target_"])
        # the schema merge drops ??? values, so required keys are collected from the node first (full keys)
        missing = {m.removeprefix(f"{key}.") for m in OmegaConf.missing_keys(node)} if OmegaConf.is_config(node) \
            else set()
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
        missing |= set(OmegaConf.missing_keys(cfg[key]))
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
