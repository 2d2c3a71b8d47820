"""Stage cache: a finished stage is reused only when everything it read is unchanged.

A stage's key hashes its parts: the config nodes it depends on (`stage_cache.nodes`), the seed, the content
digest of every input file or dir it reads (`stage_cache.inputs`: prompt files, eval files, datasets, the
upstream run's outputs) and a fingerprint of the code that runs it (package version + a hash of the stage's
and the core's sources and bundled data; `stage_cache.ignore_code=true` leaves it out of the key). The manifest
records the parts; a miss names the part that changed, compared with the closest earlier entry.

File digests are SHA-256 of the content, remembered by (path, size, mtime_ns) in `<stage_cache.dir>/digests.sqlite`
so a big file is hashed once until it is written again.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import sqlite3
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.manifest import MANIFEST, write_json

log = logging.getLogger(__name__)

KEY_FORMAT = 2  # bumped when the parts change: entries of another format are never reused
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".jsonl", ".json", ".yaml", ".md", ".txt"}
CHUNK = 1 << 20


# ---- content digests --------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """SHA-256 of file contents, remembered by (path, size, mtime_ns): an unchanged file is never read twice."""

    def __init__(self, root: str | Path | None):
        self.db = None
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(Path(root) / "digests.sqlite", timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                            "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL)")

    def file(self, path: Path) -> str:
        st = path.stat()
        if self.db is not None:
            row = self.db.execute("SELECT sha256 FROM digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                                  (str(path), st.st_size, st.st_mtime_ns)).fetchone()
            if row:
                return row[0]
        digest = sha256_file(path)
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)",
                            (str(path), st.st_size, st.st_mtime_ns, digest))
        return digest

    def tree(self, paths: list[Path], base: Path) -> str:
        """One digest over files and dirs (every file under a dir), by path relative to `base` and content."""
        h = hashlib.sha256()
        for top in sorted(paths):
            files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
            for f in files:
                h.update(f"{f.relative_to(base) if f.is_relative_to(base) else f.name}\0{self.file(f)}\n".encode())
        return h.hexdigest()

    def path(self, path: str | Path) -> str:
        """Digest of a file, of a finished run dir's outputs (those its manifest lists) or of any other dir."""
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.is_file():
            return self.file(path)
        manifest = path / MANIFEST
        if manifest.is_file():
            outputs = json.loads(manifest.read_text()).get("outputs", {})
            listed = [p if p.is_absolute() else path / p for p in (Path(v) for v in outputs.values() if isinstance(v, str))]
            return self.tree([p for p in listed if p.exists()], path)
        return self.tree([path], path)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


# ---- key parts --------------------------------------------------------------------------------------------------
def _select(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted, throw_on_missing=False)


def _without(value: Any, path: str, ignore: set[str]) -> Any:
    """`value` with the dotted paths in `ignore` removed at any depth."""
    if not isinstance(value, dict):
        return value
    return {k: _without(v, f"{path}.{k}", ignore) for k, v in value.items() if f"{path}.{k}" not in ignore}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def config_part(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The stage's config nodes (stage_cache.nodes[stage]) as plain data, minus stage_cache.ignore."""
    ignore = set(cfg.stage_cache.ignore)
    out = {}
    for node in cfg.stage_cache.nodes.get(stage, []):
        value = _select(cfg, node)
        if value is not None:
            out[node] = _without(_plain(value), node, ignore)
    return out


def input_paths(cfg: DictConfig, stage: str) -> dict[str, str]:
    """Config key -> path for every input the stage reads (stage_cache.inputs[stage]; `*` matches one key)."""
    out: dict[str, str] = {}
    for pattern in cfg.stage_cache.inputs.get(stage, []):
        for key, value in _expand(cfg, pattern.split("."), ""):
            if isinstance(value, str) and value:
                out[key] = value
    return out


def _expand(node: Any, parts: list[str], prefix: str) -> Any:
    """(dotted key, value) of every config key matching the pattern parts; only matched values are resolved."""
    if not parts:
        yield prefix, node
        return
    if not isinstance(node, DictConfig):
        return
    head, rest = parts[0], parts[1:]
    for k in (k for k in node if fnmatch.fnmatchcase(str(k), head)):
        yield from _expand(node[k], rest, f"{prefix}.{k}" if prefix else str(k))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty dicts stay values."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


@functools.cache
def code_fingerprint(stage: str, root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """Package version + a hash of the sources the stage runs: its own package, `core/` and the bundled data."""
    try:
        version = metadata.version("gpt4all-lab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    h = hashlib.sha256()
    dirs = [root / "core", root / "data", root / stage] if (root / stage).is_dir() else [root / "core", root / "data"]
    files = sorted(f for d in dirs if d.is_dir() for f in d.rglob("*")
                   if f.is_file() and f.suffix in CODE_SUFFIXES and "__pycache__" not in f.parts)
    files += [f for f in (root / f"{stage}.py", root / "__init__.py") if f.is_file()]
    for f in files:
        h.update(f"{f.relative_to(root)}\0".encode() + f.read_bytes() + b"\0")
    return {"version": version, "sources": h.hexdigest()[:16]}


def key_parts(cfg: DictConfig, stage: str, extra_inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything a stage's result depends on: config nodes, seed, input digests and the code fingerprint."""
    sc = cfg.stage_cache
    paths = {**input_paths(cfg, stage), **(extra_inputs or {})}
    digests = DigestCache(sc.dir)
    try:  # a path that is not on disk (a hub id) counts as such; the stage itself says if it needs the file
        inputs = {k: {"path": str(Path(p).resolve()) if Path(p).exists() else p,
                      "digest": digests.path(p) if Path(p).exists() else "absent"} for k, p in sorted(paths.items())}
    finally:
        digests.close()
    return {"format": KEY_FORMAT, "stage": stage, "config": config_part(cfg, stage), "seed": _plain(cfg.get("seed")),
            "inputs": inputs, "code": dict(code_fingerprint(stage)), "ignore_code": bool(sc.get("ignore_code", False))}


def key_of(parts: dict[str, Any]) -> str:
    """The cache key: a hash of the parts (input paths left out: only their content counts)."""
    data = {k: v for k, v in parts.items() if k != "ignore_code" and not (k == "code" and parts.get("ignore_code"))}
    data["inputs"] = {k: v["digest"] for k, v in parts.get("inputs", {}).items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two key parts, in words ("input file x.jsonl changed (digest a1b2 -> c3d4)")."""
    if old.get("format") != new.get("format"):
        return [f"the cache entry has key format {old.get('format')} (an older gpt4all-lab), this run {new.get('format')}"]
    out = []
    fo, fn = flatten(old.get("config", {})), flatten(new.get("config", {}))
    for k in sorted(set(fo) | set(fn)):
        if fo.get(k, "<absent>") != fn.get(k, "<absent>"):
            out.append(f"config {k} changed ({fo.get(k, '<absent>')} -> {fn.get(k, '<absent>')})")
    if old.get("seed") != new.get("seed"):
        out.append(f"seed changed ({old.get('seed')} -> {new.get('seed')})")
    io, inew = old.get("inputs", {}), new.get("inputs", {})
    for k in sorted(set(io) | set(inew)):
        a, b = io.get(k), inew.get(k)
        if a is None or b is None:
            out.append(f"input {k} {'added' if a is None else 'removed'} ({(a or b)['path']})")
        elif a["digest"] != b["digest"]:
            out.append(f"input {'file' if Path(b['path']).suffix else 'dir'} {b['path']} ({k}) changed "
                       f"(digest {a['digest'][:8]} -> {b['digest'][:8]})")
    co, cn = old.get("code", {}), new.get("code", {})
    if co != cn and not (old.get("ignore_code") or new.get("ignore_code")):
        out.append(f"code of {new.get('stage')} changed (gpt4all-lab {co.get('version')} -> {cn.get('version')}, "
                   f"sources {co.get('sources')} -> {cn.get('sources')}; stage_cache.ignore_code=true ignores this)")
    return out


class StageCache:
    """Entries `<dir>/<stage>/<key>.json` -> the run dir that produced that key, its parts and its outputs' digest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _entries(self, stage: str) -> list[tuple[Path, dict[str, Any]]]:
        out = []
        for path in sorted((self.root / stage).glob("*.json")):
            try:
                out.append((path, json.loads(path.read_text())))
            except (OSError, json.JSONDecodeError):
                log.warning("[%s] unreadable stage-cache entry %s: ignored", stage, path)
        return out

    def lookup(self, stage: str, parts: dict[str, Any]) -> tuple[Path | None, str]:
        """(run dir to reuse, or None, and why not)."""
        key = key_of(parts)
        entry_path = self.root / stage / f"{key}.json"
        if not entry_path.is_file():
            return None, self.why_missing(stage, parts)
        try:
            entry = json.loads(entry_path.read_text())
        except json.JSONDecodeError:
            return None, f"cache entry {entry_path} is unreadable (half-written)"
        run_dir = Path(entry.get("run_dir", ""))
        if not run_dir.is_dir():
            return None, f"cache entry {key} points at {run_dir}, which no longer exists"
        if not (run_dir / MANIFEST).is_file():
            return None, f"cache entry {key} points at {run_dir}, which has no {MANIFEST} (half-written)"
        if "outputs_digest" not in entry:
            return None, f"cache entry {key} comes from an older gpt4all-lab (no outputs digest)"
        digests = DigestCache(self.root)
        try:
            now = digests.path(run_dir)
        except OSError as err:
            now = f"unreadable: {err}"
        finally:
            digests.close()
        if now != entry["outputs_digest"]:
            return None, f"the outputs in {run_dir} changed since they were cached (half-written or edited)"
        return run_dir, ""

    def why_missing(self, stage: str, parts: dict[str, Any]) -> str:
        """The parts that differ from the closest earlier entry of this stage (most recent on ties)."""
        best: list[str] | None = None
        for _, entry in sorted(self._entries(stage), key=lambda e: e[1].get("stored_at", ""), reverse=True):
            if "parts" not in entry:
                continue
            diff = changes(entry["parts"], parts)
            if diff and (best is None or len(diff) < len(best)):
                best = diff
        return "; ".join(best) if best else "no earlier run of this stage in the cache"

    def store(self, stage: str, parts: dict[str, Any], run_dir: Path) -> str:
        key = key_of(parts)
        digests = DigestCache(self.root)
        try:
            outputs = digests.path(run_dir)
        finally:
            digests.close()
        write_json(self.root / stage / f"{key}.json", {"run_dir": str(run_dir), "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                       "parts": parts, "outputs_digest": outputs})
        return key
