"""Schemas of the nodes shared by the pipeline and the run tools: `pipeline`, `stage_cache` and `cost`."""

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


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "pipeline": PipelineSchema,
    "stage_cache": StageCacheSchema,
    "cost": CostSchema,
}
