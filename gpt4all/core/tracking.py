"""Experiment tracking (W&B offline by default, CSV, or none) and the wrapper every stage runs inside."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from gpt4all.core.config import config_hash, to_container, validate

log = logging.getLogger(__name__)

SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password")


def redact(data: Any) -> Any:
    """Drop values of keys that look like secrets (names of env vars holding them are kept)."""
    if isinstance(data, dict):
        return {
            k: ("<redacted>" if any(w in k.lower() for w in SECRET_WORDS) and not k.lower().endswith("_env")
                and isinstance(v, str) else redact(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def run_label(run_dir: Path, stage: str) -> str:
    """`<time>` for a run dir, `<pipeline time>` for a pipeline's stage dir, `<sweep time>-<job>` in a sweep."""
    if run_dir.name == stage:
        run_dir = run_dir.parent
    return f"{run_dir.parent.name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


class Tracker:
    """One tracked run per stage: metrics, tables and images go to every configured logger."""

    def __init__(self, cfg: DictConfig, stage: str, run_dir: Path, group: str | None = None):
        self.stage, self.run_dir = stage, Path(run_dir)
        self.loggers = {k for k, v in (cfg.get("logger") or {}).items() if v is not None}
        self.config = redact(to_container(cfg))
        self.wandb_run = None
        self.csv_path: Path | None = None
        if "wandb" in self.loggers:
            import wandb

            w = cfg.logger.wandb
            self.wandb_run = wandb.init(
                project=w.project,
                entity=w.entity,
                group=w.group or group,
                tags=list(w.tags or []),
                mode=w.mode,
                job_type=stage,
                name=f"{stage}-{run_label(self.run_dir, stage)}",
                dir=str(self.run_dir),
                config=self.config,
                reinit="finish_previous",
            )
        if "csv" in self.loggers:
            self.csv_path = self.run_dir / cfg.logger.csv.filename

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.csv_path is not None:
            new = not self.csv_path.exists()
            with self.csv_path.open("a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["time", "step", "key", "value"])
                for k, v in metrics.items():
                    w.writerow([f"{time.time():.3f}", step if step is not None else "", k, v])

    def summary(self, metrics: dict[str, Any]) -> None:
        """Headline numbers of the run (W&B summary; CSV rows with step 'summary')."""
        if self.wandb_run is not None:
            self.wandb_run.summary.update(metrics)
        if self.csv_path is not None:
            self.log({f"summary/{k}": v for k, v in metrics.items()})

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if self.wandb_run is not None and rows:
            import wandb

            cols = list(rows[0].keys())
            self.wandb_run.log({name: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})

    def image(self, name: str, path: Path) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Image(str(path))})

    def lightning_loggers(self) -> list[Any]:
        """Lightning loggers writing into this run (the W&B run is shared, not re-created)."""
        from lightning.pytorch.loggers import CSVLogger, WandbLogger

        out: list[Any] = []
        if self.wandb_run is not None:
            out.append(WandbLogger(experiment=self.wandb_run))
        if self.csv_path is not None:
            out.append(CSVLogger(save_dir=str(self.run_dir), name="lightning", version=""))
        return out

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


StageFn = Callable[[DictConfig, Path, Tracker], dict[str, Any]]


def run_stage(stage: str, cfg: DictConfig, run_dir: Path, fn: StageFn, group: str | None = None) -> dict[str, Any]:
    """Validate the config, run one stage inside a tracked run, and always close the run.

    A failure still finishes the W&B run (with a non-zero exit code), so one failed multirun job never leaks
    into the next job's run. Returns the stage's headline numbers.
    """
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("[%s] output dir: %s (config %s)", stage, run_dir, config_hash(cfg))
    tracker = Tracker(cfg, stage, run_dir, group=group)
    try:
        result = fn(cfg, run_dir, tracker)
        tracker.summary({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    except BaseException:
        log.exception("[%s] failed; outputs so far are in %s", stage, run_dir)
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    log.info("[%s] done; outputs in %s", stage, run_dir)
    return result


def sweep_group() -> str | None:
    """In a Hydra multirun every job shares the sweep dir's name as its W&B group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return f"sweep-{Path(hc.sweep.dir).name}"
    except Exception:  # not under Hydra (tests, library use)
        return None
    return None

