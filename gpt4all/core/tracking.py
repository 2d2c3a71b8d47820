"""Experiment tracking (W&B offline by default, CSV, or none) and the wrapper every stage runs inside."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.cache import DigestCache, key_of, key_parts
from gpt4all.core.config import config_hash, to_container, validate
from gpt4all.core.manifest import MANIFEST, stamp_manifest, write_json

log = logging.getLogger(__name__)

SECRET_WORDS = ("api_key", "apikey", "secret", "password", "auth_token", "access_token")


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


def _artifact(stage: str, run_dir: Path):
    """A reference artifact over the output paths listed in a stage's manifest."""
    import wandb

    name, kind = ARTIFACTS[stage]
    manifest = json.loads((run_dir / MANIFEST).read_text())
    meta = {"run_dir": str(run_dir), "counts": manifest.get("counts", {})}
    if manifest.get("inputs", {}).get("pairs"):  # data.pairs: the dataset's name, location and content digest
        meta["dataset"] = manifest["inputs"]["pairs"]
    art = wandb.Artifact(name, type=kind, metadata=meta)
    for key, rel in manifest["outputs"].items():
        if rel is None:  # an output this run did not make (e.g. no checkpoint with callbacks=none)
            continue
        path = Path(rel) if Path(rel).is_absolute() else run_dir / rel
        if path.exists():
            art.add_reference(path.resolve().as_uri(), name=key, checksum=True, max_objects=100_000)
    return art


def run_label(run_dir: Path, stage: str) -> str:
    """`<time>` for a run dir, `<pipeline time>` for a pipeline's stage dir, `<sweep time>-<job>` in a sweep."""
    if run_dir.name == stage:
        run_dir = run_dir.parent
    return f"{run_dir.parent.name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


class Tracker:
    """One tracked run per stage: metrics, tables and images go to every configured logger."""

    def __init__(self, cfg: DictConfig, stage: str, run_dir: Path, group: str | None = None):
        self.stage, self.run_dir = stage, Path(run_dir)
        # under DDP every process runs the stage; only global rank 0 tracks
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
        self.loggers = {k for k, v in (cfg.get("logger") or {}).items() if v is not None} if rank == 0 else set()
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

    def lineage(self, stage: str, run_dir: Path, upstream: Path | None) -> None:
        """Log the stage's outputs as a W&B reference artifact that uses the upstream stage's artifact.

        References record paths and checksums without copying model files into the run. Online, the run
        `use_artifact`s its input, which links the lineage graph; offline (where W&B refuses use_artifact) the
        input artifact's name and digest go into the output artifact's metadata.
        """
        if self.wandb_run is None:
            return
        used = None
        if upstream is not None and (upstream / MANIFEST).is_file():
            up_stage = json.loads((upstream / MANIFEST).read_text())["stage"]
            if up_stage in ARTIFACTS:
                used = _artifact(up_stage, upstream)
                if not self.wandb_run.settings._offline:
                    self.wandb_run.use_artifact(used)
        if stage in ARTIFACTS:
            art = _artifact(stage, run_dir)
            if used is not None:
                used.finalize()
                art.metadata["upstream"] = {"name": used.name, "type": used.type, "digest": used.digest}
            self.wandb_run.log_artifact(art)

    def lightning_loggers(self) -> list[Any]:
        """Lightning loggers writing into this run: the W&B run (shared, not re-created) and always a CSV
        history in `<run dir>/lightning/metrics.csv`, which gpt4all-report plots as training curves."""
        from lightning.pytorch.loggers import CSVLogger, WandbLogger

        out: list[Any] = [CSVLogger(save_dir=str(self.run_dir), name="lightning", version="")]
        if self.wandb_run is not None:
            out.append(WandbLogger(experiment=self.wandb_run))
        return out

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


StageFn = Callable[[DictConfig, Path, Tracker], dict[str, Any]]

# W&B artifact (name, type) of each stage's outputs: collect -> curate -> train -> quantize make the lineage
ARTIFACTS = {
    "collect": ("responses", "dataset"),
    "curate": ("curated", "dataset"),
    "train": ("lora-model", "model"),
    "quantize": ("quantized-model", "model"),
    "evaluate": ("evaluation", "evaluation"),
}
# manifest input key naming the upstream run dir
UPSTREAM = {"curate": "collect_dir", "train": "curate_dir", "quantize": "train_dir"}


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The resolved config, secrets redacted, as `config.yaml` in the run dir (what gpt4all-diff compares)."""
    path = run_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(redact(to_container(cfg)))))
    return path


def upstream_dir(stage: str, run_dir: Path) -> Path | None:
    """The run dir this stage read its input from, as recorded in its manifest."""
    key = UPSTREAM.get(stage)
    if not key or not (run_dir / MANIFEST).is_file():
        return None
    value = json.loads((run_dir / MANIFEST).read_text())["inputs"].get(key)
    return Path(value) if value else None


def run_stage(
    stage: str, cfg: DictConfig, run_dir: Path, fn: StageFn, group: str | None = None,
    parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the config, run one stage inside a tracked run, and always close the run.

    A failure still finishes the W&B run (with a non-zero exit code), so one failed multirun job never leaks
    into the next job's run. On success the manifest gets the stage's cache key, its parts (what the stage read:
    config nodes, seed, input digests, code fingerprint; the pipeline passes the parts it looked up) and the
    wall time, `result.json` holds the headline numbers, and the outputs are logged as a W&B artifact that uses
    the input's artifact.
    """
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    if parts is None and "stage_cache" in cfg:
        parts = key_parts(cfg, stage)  # before the stage runs: the inputs as it reads them
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    log.info("[%s] output dir: %s (config %s)", stage, run_dir, config_hash(cfg))
    tracker = Tracker(cfg, stage, run_dir, group=group)
    start = time.perf_counter()
    try:
        result = fn(cfg, run_dir, tracker)
        result["seconds"] = round(time.perf_counter() - start, 1)
        upstream = upstream_dir(stage, run_dir)
        if parts is not None:
            parts = {**parts, "inputs": dict(parts["inputs"])}
            if upstream is not None and str(upstream.resolve()) not in {v["path"] for v in parts["inputs"].values()}:
                digests = DigestCache(cfg.stage_cache.dir)  # a stage that found its input itself (the latest run)
                try:
                    parts["inputs"]["upstream"] = {"path": str(upstream.resolve()), "digest": digests.path(upstream)}
                finally:
                    digests.close()
            stamp_manifest(run_dir, cache_key=key_of(parts), cache_parts=parts, seconds=result["seconds"])
        else:
            stamp_manifest(run_dir, seconds=result["seconds"])
        write_json(run_dir / "result.json", result)
        tracker.summary({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
        tracker.lineage(stage, run_dir, upstream)
    except BaseException:
        log.exception("[%s] failed; outputs so far are in %s", stage, run_dir)
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    log.info("[%s] done in %.1fs; outputs in %s", stage, result["seconds"], run_dir)
    return result


def is_multirun() -> bool:
    """True inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """In a Hydra multirun every job shares the sweep dir's name as its W&B group."""
    if not is_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return f"sweep-{Path(HydraConfig.get().sweep.dir).name}"

