"""curate: find the collect run (or read data.pairs) -> engine (ingest, row filters, dedup, source rule) -> write
the dataset, the quarantine file, the funnel, the diversity report and the maps; log them to the tracker; write the manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig
from tqdm import tqdm

from gpt4all.core.config import ConfigError, config_hash, latest_run
from gpt4all.core.jsonl import write_jsonl
from gpt4all.core.manifest import read_manifest, write_json, write_manifest
from gpt4all.core.pairs import load_pairs
from gpt4all.core.tracking import Tracker
from gpt4all.curate import diversity as div
from gpt4all.curate.embed import embed
from gpt4all.curate.engine import (
    SOURCE_REASON,
    Verdicts,
    build_chain,
    checkpoint_guard,
    curation_fingerprint,
    file_digest,
    global_pass,
    ingest,
    row_pass,
)
from gpt4all.curate.funnel import Funnel
from gpt4all.curate.maps import write_maps

log = logging.getLogger(__name__)
DATASET_COLUMNS = ("id", "prompt", "response", "source")


def _texts(ds: datasets.Dataset, idx: np.ndarray) -> tuple[list[str], list[str]]:
    sub = ds.select(np.sort(idx)).select_columns(["prompt", "response"])
    return sub["prompt"], sub["response"]


def _sample(rng: np.random.Generator, idx: np.ndarray, k: int) -> np.ndarray:
    return np.sort(rng.choice(idx, size=k, replace=False)) if len(idx) > k else idx


def source_rule(ds: datasets.Dataset, v: Verdicts, src: np.ndarray, names: list[str], cfg: DictConfig,
                work: Path) -> dict[str, Any]:
    """Measure each source's diversity on its surviving rows and judge it (checkpointed in the work dir)."""
    path = work / "diversity.json"
    if path.exists():
        return json.loads(path.read_text())
    d = cfg.curation.diversity
    alive = v.step == -1
    rng = np.random.default_rng(cfg.seed)
    codes, n = np.unique(src[alive], return_counts=True)
    counts = {names[c]: int(k) for c, k in zip(codes, n)}
    report: dict[str, Any] = {}
    if d.enabled and len(codes):
        idx = np.sort(np.concatenate([_sample(rng, np.flatnonzero(alive & (src == c)), d.sample_size) for c in codes]))
        prompts, responses = _texts(ds, idx)
        emb = embed([p + "\n" + r for p, r in zip(prompts, responses)], cfg.curation.embedding,
                    cfg.get("model"), cfg.paths.get("cache_dir"), cfg.seed)
        metrics = {}
        for c in codes:
            sel = np.flatnonzero(src[idx] == c)
            metrics[names[c]] = div.source_metrics([prompts[i] for i in sel], [responses[i] for i in sel], emb[sel],
                                                   d.distinct_budget)
        report = div.judge(metrics, counts, d)
    write_json(path, report)
    return report


def _rows(sub: datasets.Dataset) -> Iterator[dict[str, Any]]:
    """Original collect records back from the ingested columns (extra fields included)."""
    b = sub[:]
    for i in range(len(sub)):
        rec = {k: b[k][i] for k in ("id", "source", "prompt", "response", "finish_reason")}
        rec["error"] = json.loads(b["error"][i]) if b["error"][i] else None
        if b["extra"][i]:
            rec.update(json.loads(b["extra"][i]))
        rec["line"] = b["line"][i]
        yield rec


def _rejects(ds: datasets.Dataset, v: Verdicts, steps: list[str], batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Every dropped row with its step, reason and, for duplicates, the id of the row that was kept."""
    rej = np.flatnonzero(v.step >= 0)
    ids = ds.data.column("id")
    for lo in tqdm(range(0, len(rej), batch), desc="curate: quarantine", unit="batch", leave=False):
        idx = rej[lo:lo + batch]
        dups = v.dup_of[idx]
        twin = ids.take(pa.array(np.where(dups >= 0, dups, 0))).to_pylist()
        for j, rec in enumerate(_rows(ds.select(idx))):
            rec["drop_step"] = steps[v.step[idx[j]]]
            rec["drop_reason"] = v.reasons[v.reason[idx[j]]]
            if dups[j] >= 0:
                rec["duplicate_of"] = twin[j]
            yield rec


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    c = cfg.curate
    work = (Path(c.resume) if c.resume else run_dir) / "work"
    pairs = None
    if c.input_dir or not cfg.data.get("pairs"):
        input_dir = Path(c.input_dir) if c.input_dir else latest_run(cfg.paths.output_dir, "collect")
        responses = Path(read_manifest(input_dir, "collect")["outputs"]["responses"])
    else:  # pairs the user brought (data/pairs): read as collect records, finish_reason and error empty
        input_dir, pairs = None, load_pairs(cfg.data.pairs)
        responses = write_jsonl(work / "pairs.jsonl", pairs.records())
    if c.resume and not (work / "checkpoint.json").is_file():
        raise ConfigError(f"curate.resume={c.resume}: no checkpoint at {work} (only an interrupted run, or one "
                          f"with curate.keep_work=true, can be resumed)")
    chain = build_chain(cfg.curation)
    checkpoint_guard(work, {"input": str(responses.resolve()), "input_digest": file_digest(responses),
                            "curation": curation_fingerprint(cfg.curation), "shard_rows": c.shard_rows})
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        timings[name] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()

    ds = ingest(responses, work)
    lap("ingest")
    rows = row_pass(ds, chain, work, c.shard_rows, c.num_proc, c.batch_size)
    lap("row_filters")
    v = global_pass(rows, chain, work)
    del rows
    lap("dedup")
    enc = pc.dictionary_encode(ds.data.column("source").combine_chunks())
    src, names = enc.indices.to_numpy(zero_copy_only=False), [str(s) for s in enc.dictionary.to_pylist()]
    candidates = v.step == -1
    report = source_rule(ds, v, src, names, cfg, work)
    dropped_sources = [s for s, r in report.items() if r["dropped"]]
    v.drop(candidates & np.isin(src, [names.index(s) for s in dropped_sources]), len(chain.steps) - 1, SOURCE_REASON)
    lap("source_rule")

    funnel = Funnel.from_arrays(chain.steps, names, src, v.step, v.reason, v.reasons)
    stats = funnel.to_dict()
    kept_idx = np.flatnonzero(v.step == -1)
    dataset_dir = run_dir / "dataset"
    ds.select(kept_idx).select_columns(list(DATASET_COLUMNS)).save_to_disk(str(dataset_dir))
    rejects_path = write_jsonl(run_dir / "rejects.jsonl", _rejects(ds, v, chain.steps))
    write_json(run_dir / "funnel.json", stats)
    (run_dir / "funnel.md").write_text(funnel.to_markdown())
    funnel.write_csv(run_dir / "funnel.csv")
    write_json(run_dir / "diversity.json", report)
    (run_dir / "diversity.md").write_text(div.to_markdown(report))
    lap("outputs")

    outputs: dict[str, Any] = {"dataset": dataset_dir, "rejects": rejects_path, "funnel_json": run_dir / "funnel.json",
                               "funnel_md": run_dir / "funnel.md", "funnel_csv": run_dir / "funnel.csv",
                               "diversity_json": run_dir / "diversity.json", "diversity_md": run_dir / "diversity.md"}
    maps = _maps(ds, v, candidates, src, names, cfg, run_dir / "maps") if cfg.curation.maps.enabled else None
    if maps:
        outputs.update(maps["paths"])
        write_json(run_dir / "maps" / "topics.json", {k: maps[k] for k in ("topics", "homogeneous_clusters", "points")})
    lap("maps")

    _track(tracker, stats, report, maps)
    write_manifest(run_dir, "curate", config_hash(cfg),
                   inputs={"collect_dir": input_dir, "responses": None if pairs else responses, "work_dir": work,
                           "pairs": pairs.info() if pairs else None},
                   outputs=outputs, counts=stats | {"dropped_sources": dropped_sources},
                   metrics={"seconds": timings})
    if not c.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("[curate] %s", " -> ".join(f"{k} {n:,}" for k, n in stats["stages"].items()))
    return {
        "dataset": str(dataset_dir),
        "total": stats["total"],
        "cleaned": stats["stages"]["cleaned"],
        "kept": stats["kept"],
        "kept_per_source": {s: r["kept"] for s, r in stats["per_source"].items()},
        "dropped_sources": dropped_sources,
    }


def _maps(ds: datasets.Dataset, v: Verdicts, candidates: np.ndarray, src: np.ndarray, names: list[str],
          cfg: DictConfig, out: Path) -> dict[str, Any] | None:
    """Figure 1 (candidates by source) and Figure 2 (final rows by topic) on a seeded sample."""
    idx = _sample(np.random.default_rng(cfg.seed + 1), np.flatnonzero(candidates), cfg.curation.maps.max_points)
    if len(idx) == 0:
        return None
    prompts, responses = _texts(ds, idx)
    texts = [p + "\n" + r for p, r in zip(prompts, responses)]
    emb = embed(texts, cfg.curation.embedding, cfg.get("model"), cfg.paths.get("cache_dir"), cfg.seed)
    return write_maps(out, texts, [names[s] for s in src[idx]], v.step[idx] == -1, emb, cfg.curation.maps,
                      cfg.seed, cfg.curate.num_proc)


def _track(tracker: Tracker, stats: dict[str, Any], report: dict[str, Any], maps: dict[str, Any] | None) -> None:
    tracker.log({"curate/total": stats["total"], "curate/cleaned": stats["stages"]["cleaned"],
                 "curate/kept": stats["kept"], **{f"curate/dropped/{r}": n for r, n in stats["dropped"].items()}})
    tracker.table("curate/funnel", stats["steps"])
    tracker.table("curate/drop_reasons", stats["by_reason"])
    tracker.table("curate/diversity", [
        {"source": s, "rows": r["rows"], **{k: v for k, v in r["metrics"].items() if k != "top_prefix"},
         "failed": ", ".join(r["failed"]), "dropped": r["dropped"], "why": r["why"]} for s, r in report.items()])
    if maps:
        tracker.table("curate/topics", [{**{k: t[k] for k in ("topic", "size", "mean_similarity", "homogeneous")},
                                         "keywords": ", ".join(t["keywords"]), "sources": json.dumps(t["sources"])}
                                        for t in maps["topics"]])
        for key in ("map_by_source", "map_by_topic"):
            tracker.image(f"curate/{key}", maps["paths"][key])
