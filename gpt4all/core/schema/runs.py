"""Schemas of the nodes shared by every stage and the run tools: `pipeline`, `stage_cache`, `cost`, `logger`,
`paths`, and the top-level keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PipelineSchema:
    stages: list[str] = field(default_factory=lambda: ["collect", "curate", "train", "quantize", "evaluate"])
    skip_finished: bool = True  # in a multirun, a job whose every stage is cached is skipped (sweep resume)
    fail_fast: bool = False  # in a multirun, stop the sweep at the first failed job


@dataclass
class StageCacheSchema:
    enabled: list[str] = field(default_factory=lambda: ["collect", "curate"])
    dir: str = "???"
    force: list[str] = field(default_factory=list)  # stages to re-run even when their key is cached
    ignore_code: bool = False  # true: a change of the code (version, sources) does not force a re-run
    nodes: dict[str, list[str]] = field(default_factory=dict)  # stage -> config nodes its key hashes
    inputs: dict[str, list[str]] = field(default_factory=dict)  # stage -> config keys naming files/dirs it reads
    ignore: list[str] = field(default_factory=list)


@dataclass
class CostSchema:
    accelerator: str = "cpu"
    accelerators: Any = 1  # devices used by training (trainer.devices)
    price_per_accelerator_hour: float = 0.0  # USD


@dataclass
class WandbSchema:
    project: str = "gpt4all-lab"
    entity: str | None = None
    group: str | None = None  # null: the pipeline run or the sweep
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"  # offline | online | disabled


@dataclass
class CsvLoggerSchema:
    filename: str = "metrics.csv"


@dataclass
class LoggerSchema:
    wandb: WandbSchema | None = None  # null: not logging to W&B
    csv: CsvLoggerSchema | None = None


@dataclass
class PathsSchema:
    root_dir: str = "???"
    output_dir: str = "???"
    cache_dir: str = "???"  # the model cache (dequantized checkpoints, llama.cpp sources)


# top-level keys that are not nodes with a schema: plain values, Hydra's own node, and the free-form nodes
# (`trainer` and `callbacks` hold `_target_` nodes whose keys are checked against the target's signature)
TOP_LEVEL = {"seed": int, "stage": str, "hydra": None, "trainer": None, "callbacks": None}

# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "pipeline": PipelineSchema,
    "stage_cache": StageCacheSchema,
    "cost": CostSchema,
    "logger": LoggerSchema,
    "paths": PathsSchema,
}
