"""collect: setup (sources, teacher) -> run (ask every prompt) -> save (responses.jsonl, manifest)."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from gpt4all.collect.client import collect
from gpt4all.collect.sources import mix
from gpt4all.core.config import config_hash
from gpt4all.core.manifest import write_manifest
from gpt4all.core.tracking import Tracker

RESPONSES = "responses.jsonl"


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    sources = [instantiate(node) for node in cfg.data.sources.values()]
    if not sources:
        raise ValueError("no data sources selected: set data/source=[...]")
    prompts, duplicates = mix(sources, dedup=cfg.collect.dedup_prompts)
    if cfg.collect.limit is not None:
        prompts = prompts[: cfg.collect.limit]
    per_source = Counter(p.source for p in prompts)

    out = run_dir / RESPONSES
    out.unlink(missing_ok=True)
    teacher = cfg.teacher
    server = (
        instantiate(teacher.server, log_path=run_dir / "teacher_server.log") if teacher.server else nullcontext(teacher.base_url)
    )
    with server as base_url:
        stats = asyncio.run(collect(prompts, teacher, base_url, out))

    tracker.log({f"collect/{k}": v for k, v in stats.items()})
    tracker.table("collect/per_source", [{"source": s, "prompts": n} for s, n in sorted(per_source.items())])
    write_manifest(
        run_dir,
        "collect",
        config_hash(cfg),
        inputs={"sources": [s.name for s in sources], "teacher": teacher.name, "model": teacher.model},
        outputs={"responses": out},
        counts={"per_source": dict(per_source), "duplicate_prompts_dropped": duplicates, **stats},
    )
    return {"responses": str(out), **stats}
