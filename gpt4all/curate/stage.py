"""curate: setup (find the collect run) -> run (filter chain) -> save (dataset, rejects, funnel, manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.jsonl import iter_jsonl, write_jsonl
from gpt4all.core.manifest import read_manifest, write_json, write_manifest
from gpt4all.core.tracking import Tracker
from gpt4all.curate.filters import Funnel, build_filters

RECORD_FIELDS = ("id", "prompt", "source", "response", "finish_reason", "error")
DATASET_COLUMNS = ("id", "prompt", "response", "source")


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    input_dir = Path(cfg.curate.input_dir) if cfg.curate.input_dir else latest_run(cfg.paths.output_dir, "collect")
    responses = Path(read_manifest(input_dir, "collect")["outputs"]["responses"])
    rows = [rec for _, rec in iter_jsonl(responses, required=RECORD_FIELDS)]

    funnel = Funnel()
    kept, rejects = funnel.apply(rows, build_filters(cfg.curation))

    dataset_dir = run_dir / "dataset"
    datasets.Dataset.from_dict({c: [str(r[c]) for r in kept] for c in DATASET_COLUMNS}).save_to_disk(str(dataset_dir))
    rejects_path = write_jsonl(run_dir / "rejects.jsonl", rejects)
    stats = funnel.to_dict()
    write_json(run_dir / "funnel.json", stats)
    (run_dir / "funnel.md").write_text(funnel.to_markdown())

    tracker.log({"curate/total": stats["total"], "curate/kept": stats["kept"],
                 **{f"curate/dropped/{r}": n for r, n in stats["dropped"].items()}})
    tracker.table("curate/funnel", [
        {"source": s, "total": v["total"], "kept": v["kept"], **{f"dropped_{r}": v["dropped"].get(r, 0) for r in stats["dropped"]}}
        for s, v in stats["per_source"].items()
    ])
    write_manifest(
        run_dir, "curate", config_hash(cfg),
        inputs={"collect_dir": input_dir, "responses": responses},
        outputs={"dataset": dataset_dir, "rejects": rejects_path, "funnel_json": run_dir / "funnel.json",
                 "funnel_md": run_dir / "funnel.md"},
        counts=stats,
    )
    return {
        "dataset": str(dataset_dir),
        "total": stats["total"],
        "kept": stats["kept"],
        "kept_per_source": {s: v["kept"] for s, v in stats["per_source"].items()},
    }
