"""`gpt4all-pipeline`: collect -> curate -> train -> quantize -> evaluate, each stage in its own sub-dir.

Stages meet only through their run dirs: after a stage finishes, the next stage's input key is pointed at its
dir, exactly as a user would pass it by hand (`curate.input_dir=...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from gpt4all.core.app import hydra_app
from gpt4all.core.config import config_hash, validate
from gpt4all.core.manifest import write_json
from gpt4all.core.tracking import run_stage

# stage -> the config keys that take its run dir
WIRING: dict[str, tuple[str, ...]] = {
    "collect": ("curate.input_dir",),
    "curate": ("train.data_dir",),
    "train": ("quantize.model_dir", "evaluate.train_dir"),
    "quantize": ("evaluate.quantize_dir",),
    "evaluate": (),
}


def stage_runner(stage: str) -> Callable[..., dict[str, Any]]:
    """The `run` function of a stage, imported only when the stage runs."""
    import importlib

    if stage not in WIRING:
        raise ValueError(f"unknown stage {stage!r} in pipeline.stages; known: {', '.join(WIRING)}")
    return importlib.import_module(f"gpt4all.{stage}.stage").run


def run_pipeline(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict[str, Any]:
    """Run the configured stages in order; write and return summary.json's content."""
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    group = group or f"pipeline-{run_dir.name}"
    summary: dict[str, Any] = {"run_dir": str(run_dir), "config_hash": config_hash(cfg), "stages": {}}
    for stage in cfg.pipeline.stages:
        stage_dir = run_dir / stage
        result = run_stage(stage, cfg, stage_dir, stage_runner(stage), group=group)
        summary["stages"][stage] = {"dir": str(stage_dir), **result}
        with open_dict(cfg):
            for key in WIRING[stage]:
                section, name = key.split(".")
                cfg[section][name] = str(stage_dir)
        write_json(run_dir / "summary.json", summary)
    print_summary(summary)
    return summary


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, f"{value:.4g}" if isinstance(value, float) else str(value))]


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"gpt4all-lab pipeline: {summary['run_dir']}")
    table.add_column("stage", style="bold")
    table.add_column("result")
    table.add_column("value", overflow="fold")
    for stage, result in summary["stages"].items():
        for key, value in _flatten("", result):
            table.add_row(stage, key, value)
            stage = ""
    Console(width=160).print(table)


main = hydra_app("pipeline", run_pipeline)

if __name__ == "__main__":
    main()
