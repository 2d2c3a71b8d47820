"""`manifest.json`: what a stage read, wrote and counted; the only thing the next stage needs to know."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_manifest(
    run_dir: Path,
    stage: str,
    config_hash: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    counts: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Record a finished stage. Output paths are stored relative to the run dir when they lie inside it."""
    run_dir = Path(run_dir)

    def rel(v: Any) -> Any:
        if isinstance(v, Path):
            try:
                return str(v.resolve().relative_to(run_dir.resolve()))
            except ValueError:
                return str(v)
        return v

    return write_json(
        run_dir / MANIFEST,
        {
            "stage": stage,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config_hash": config_hash,
            "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()},
            "outputs": {k: rel(v) for k, v in outputs.items()},
            "counts": counts or {},
            "metrics": metrics or {},
        },
    )


def stamp_manifest(run_dir: Path, **fields: Any) -> None:
    """Add top-level fields (cache key, wall time) to a finished stage's manifest."""
    path = Path(run_dir) / MANIFEST
    if path.is_file():
        write_json(path, {**json.loads(path.read_text()), **fields})


def read_manifest(run_dir: str | Path, stage: str | None = None) -> dict[str, Any]:
    """Read a stage's manifest; output paths come back absolute."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished {stage or 'stage'} run?")
    data = json.loads(path.read_text())
    if stage and data.get("stage") != stage:
        raise ValueError(f"{path} is a '{data.get('stage')}' run, expected '{stage}'")
    data["outputs"] = {
        k: str(run_dir / v) if isinstance(v, str) and not Path(v).is_absolute() and (run_dir / v).exists() else v
        for k, v in data["outputs"].items()
    }
    return data
