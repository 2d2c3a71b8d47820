"""Stage cache: a stage's key is a hash of the config nodes it depends on plus its input run's key.

Re-running a pipeline or a sweep reuses a finished stage whose key is unchanged; any relevant override changes
the key and forces a re-run, while an irrelevant one (a logger setting, a later stage's node) does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.manifest import MANIFEST, write_json

log = logging.getLogger(__name__)


def _select(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted, throw_on_missing=False)


def _without(value: Any, path: str, ignore: set[str]) -> Any:
    """`value` with the dotted paths in `ignore` removed at any depth."""
    if not isinstance(value, dict):
        return value
    return {k: _without(v, f"{path}.{k}", ignore) for k, v in value.items() if f"{path}.{k}" not in ignore}


def stage_key(cfg: DictConfig, stage: str, input_key: str | None) -> str:
    """Hash of the stage's config nodes (stage_cache.nodes[stage], minus stage_cache.ignore) and its input key."""
    sc = cfg.stage_cache
    ignore = set(sc.ignore)
    data: dict[str, Any] = {"stage": stage, "input": input_key}
    for node in sc.nodes.get(stage, []):
        value = _select(cfg, node)
        if value is None:
            continue
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        data[node] = _without(plain, node, ignore)
    pairs = _select(cfg, "data.pairs.path") if "data.pairs" in data else None
    if pairs and Path(str(pairs)).exists():  # the file's content can change under the same config: size + mtime
        files = [Path(str(pairs))] if Path(str(pairs)).is_file() else sorted(Path(str(pairs)).rglob("*"))
        data["pairs_files"] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def upstream_key(run_dir: str | Path | None) -> str | None:
    """The cache key of a finished input run (its manifest's `cache_key`, else a hash of the manifest)."""
    if not run_dir:
        return None
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data.get("cache_key") or hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class StageCache:
    """Pointers `<dir>/<stage>/<key>.json` -> the run dir that produced that key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def lookup(self, stage: str, key: str) -> Path | None:
        entry = self.root / stage / f"{key}.json"
        if not entry.is_file():
            return None
        run_dir = Path(json.loads(entry.read_text())["run_dir"])
        return run_dir if (run_dir / MANIFEST).is_file() else None

    def store(self, stage: str, key: str, run_dir: Path) -> None:
        write_json(self.root / stage / f"{key}.json", {"run_dir": str(run_dir), "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
