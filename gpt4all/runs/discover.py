"""Find runs on disk and read what they recorded: config, overrides, headline results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAGES = ("collect", "curate", "train", "quantize", "evaluate")


@dataclass
class Run:
    """A finished (or failed) run dir: a pipeline run or a single stage run."""

    path: Path
    kind: str  # "pipeline" or a stage name
    failed: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> float:
        return self.path.stat().st_mtime


def load_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config (`config.yaml`), else Hydra's composed `.hydra/config.yaml`."""
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return yaml.safe_load(path.read_text()) or {}
    raise FileNotFoundError(f"{run_dir} has no config.yaml or .hydra/config.yaml: is it a gpt4all-lab run dir?")


def load_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of the Hydra job that made this dir (looked up in it and its parents)."""
    for d in (run_dir, *run_dir.parents):
        path = d / ".hydra" / "overrides.yaml"
        if path.is_file():
            return list(yaml.safe_load(path.read_text()) or [])
    return []


def classify(run_dir: Path) -> Run | None:
    """A Run for a pipeline dir (summary.json or config.yaml with pipeline stages) or a stage dir (manifest.json)."""
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        return Run(run_dir, "pipeline", (run_dir / "FAILED").exists(), summary.get("stages", {}))
    if (run_dir / "manifest.json").is_file():
        stage = json.loads((run_dir / "manifest.json").read_text()).get("stage", "?")
        result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
        return Run(run_dir, stage, False, result)
    if (run_dir / "FAILED").exists() or ((run_dir / ".hydra").is_dir() and (run_dir / "config.yaml").is_file()):
        return Run(run_dir, "pipeline" if (run_dir / "pipeline.log").exists() else "?", True)
    return None


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run under the roots, newest first; a pipeline's stage dirs are part of the pipeline run."""
    runs: list[Run] = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_dir() or any(p.startswith(".") or p == "wandb" for p in path.relative_to(root).parts):
                continue
            if path.parent != root and classify(path.parent) is not None and path.name in STAGES:
                continue  # a stage dir inside a pipeline run
            run = classify(path)
            if run is not None:
                runs.append(run)
    return sorted(runs, key=lambda r: r.time, reverse=True)


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """Job dirs of a Hydra multirun sweep dir (numbered sub-dirs), in job order."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(jobs, key=lambda p: int(p.name))


def headline(run: Run) -> dict[str, Any]:
    """The numbers people compare: kept examples, losses, GGUF size, median perplexities, cost."""
    stages = run.result if run.kind == "pipeline" else {run.kind: run.result}
    out: dict[str, Any] = {}
    pick = {
        "collect": ("answered", "failed", "cost_usd"),
        "curate": ("kept",),
        "train": ("train_loss", "val_loss"),
        "quantize": ("gguf_mb",),
    }
    for stage, keys in pick.items():
        for key in keys:
            if key in stages.get(stage, {}):
                out[f"{stage}.{key}"] = stages[stage][key]
    for model, value in (stages.get("evaluate", {}).get("median_perplexity") or {}).items():
        out[f"ppl.{model}"] = value
    return out
