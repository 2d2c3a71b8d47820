"""`gpt4all-pipeline`: collect -> curate -> train -> quantize -> evaluate, each stage in its own sub-dir.

Stages meet only through their run dirs: after a stage finishes, the next stage's input key is pointed at its
dir, exactly as a user would pass it by hand (`curate.input_dir=...`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from gpt4all.core.app import hydra_app
from gpt4all.core.cache import StageCache, key_of, key_parts
from gpt4all.core.config import config_hash, validate
from gpt4all.core.manifest import write_json
from gpt4all.core.tracking import is_multirun, run_stage, save_config

log = logging.getLogger(__name__)

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


def preflight(cfg: DictConfig, stages: list[str]) -> list[str]:
    """Checks that would otherwise fail only after earlier stages' work; the stages to run. With data.pairs the
    pairs replace collect; a model.pretrained that cannot be loaded here fails now, naming it."""
    if cfg.data.get("pairs") and "collect" in stages:
        log.info("[pipeline] data.pairs given: no collect; curate reads the pairs")
        stages = [s for s in stages if s != "collect"]
    if cfg.model.source == "hf" and {"train", "evaluate"} & set(stages):
        from gpt4all.core.models import check_pretrained

        check_pretrained(cfg.model.pretrained)
    return stages


def run_pipeline(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict[str, Any]:
    """Run the configured stages in order, reusing cached ones; write and return summary.json's content."""
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    group = group or f"pipeline-{run_dir.name}"
    stages = preflight(cfg, list(cfg.pipeline.stages))
    cache = StageCache(cfg.stage_cache.dir)
    reusable = set(stages) if is_multirun() and cfg.pipeline.skip_finished else set(cfg.stage_cache.enabled)
    reusable -= set(cfg.stage_cache.force)

    summary: dict[str, Any] = {"run_dir": str(run_dir), "config_hash": config_hash(cfg), "stages": {}}
    for stage in stages:
        parts = key_parts(cfg, stage)
        stage_dir, why = cache.lookup(stage, parts) if stage in reusable else (None, "")
        if stage in cfg.stage_cache.force:
            why = "forced by stage_cache.force"
        if stage_dir is not None:
            log.info("[%s] cached: reusing %s (key %s; force a re-run with stage_cache.force=[%s])",
                     stage, stage_dir, key_of(parts), stage)
            result = {**read_result(stage_dir), "reused": True}
        else:
            if why:
                log.info("[%s] %s: %s", stage, "running" if why.startswith("no earlier") else "re-running", why)
            stage_dir = run_dir / stage
            result = {**run_stage(stage, cfg, stage_dir, stage_runner(stage), group=group, parts=parts),
                      "reused": False}
            cache.store(stage, parts, stage_dir)
        summary["stages"][stage] = {"dir": str(stage_dir), **result}
        with open_dict(cfg):
            for target in WIRING[stage]:
                section, name = target.split(".")
                cfg[section][name] = str(stage_dir)
        write_json(run_dir / "summary.json", summary)
    if all(s["reused"] for s in summary["stages"].values()):
        log.info("every stage was cached: this job had finished before (see the dirs in summary.json)")
    print_summary(summary)
    return summary


def read_result(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def pipeline_job(cfg: DictConfig, run_dir: Path, group: str | None) -> dict[str, Any]:
    """One Hydra job: report a failure the moment it happens; with pipeline.fail_fast, stop the sweep."""
    try:
        return run_pipeline(cfg, run_dir, group)
    except Exception as err:
        log.error("pipeline job in %s FAILED: %s: %s", run_dir, type(err).__name__, err)
        (Path(run_dir) / "FAILED").write_text(f"{type(err).__name__}: {err}\n")
        if is_multirun() and cfg.pipeline.fail_fast:
            raise SystemExit(f"stopping the sweep at the first failure (pipeline.fail_fast): {err}") from err
        raise


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


main = hydra_app("pipeline", pipeline_job)

if __name__ == "__main__":
    main()
