"""collect: sources -> requests -> (dry run | online | batch) through the answer cache -> responses.jsonl, manifest.

The run dir's responses.jsonl is written at the end, atomically, from the cache: exactly one record per prompt,
answered or failed with a reason. Answers themselves are committed to the cache (collect.cache_dir) as they
arrive, so a killed run loses only its in-flight requests and a re-run sends only what is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from gpt4all.collect.batch import BatchCollector
from gpt4all.collect.cache import AnswerCache
from gpt4all.collect.client import Collector, check_endpoint, make_client
from gpt4all.collect.cost import Ledger, price_for, token_counter
from gpt4all.collect.plan import Request, build_requests, estimate
from gpt4all.collect.sources import mix
from gpt4all.core.config import config_hash
from gpt4all.core.manifest import write_json, write_manifest
from gpt4all.core.tracking import Tracker

log = logging.getLogger(__name__)

RESPONSES = "responses.jsonl"
LEDGER = "ledger.json"
ESTIMATE = "estimate.json"
MODES = ("online", "batch")


async def send(cfg: DictConfig, todo: list[Request], base_url: str | None, cache: AnswerCache, ledger: Ledger,
               on_progress: Any) -> dict[str, Any]:
    """Send the requests online or as batches; returns mode-specific counts and the reasons of unsent ones."""
    c, teacher = cfg.collect, cfg.teacher
    client = make_client(teacher, base_url)
    try:
        await check_endpoint(client)
        if c.mode == "batch":
            counts = await BatchCollector(client, teacher, cache, ledger, c.batch, progress=c.progress,
                                          on_progress=on_progress).run(todo)
            return {**counts, "not_sent": {}}
        collector = Collector(client, teacher, cache, ledger, max_cost_usd=c.max_cost_usd, on_progress=on_progress,
                              progress_every_s=c.progress_every_s, progress=c.progress, claim_lease_s=c.claim_lease_s)
        await collector.run(todo, total=len(todo))
        return {"not_sent": collector.not_sent, "by_others": collector.by_others,
                "claims_taken_over": sum(collector.taken_over.values())}
    finally:
        await client.close()


def write_responses(path: Path, requests: list[Request], rows: dict[str, tuple[str, dict, int]], cached: set[str],
                    not_sent: dict[str, dict]) -> tuple[Counter[str], float]:
    """One record per prompt, atomically (temp file + rename). Returns outcome counts (with failure reasons)
    and the cost of every answer in the file, cached ones included."""
    counts: Counter[str] = Counter()
    dataset_cost = 0.0
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for req in requests:
            status, rec, attempts = rows.get(req.key, ("failed", {}, 0))
            if req.key not in rows:
                error = not_sent.get(req.key) or {"type": "NotSent", "status": None, "attempts": 0,
                                                  "message": "no outcome recorded (interrupted run?)"}
                rec = {"response": None, "finish_reason": None, "usage": None, "error": error, "cost_usd": 0.0}
            elif status == "failed":
                rec = {**rec, "error": {**rec["error"], "attempts": attempts}}
            for p in req.prompts:
                out = {"id": p.id, "source": p.source, "prompt": p.prompt, **rec, "key": req.key,
                       "cached": req.key in cached}
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
                counts[status] += 1
                counts["cached"] += out["cached"]
                if status == "failed":
                    counts[f"failed_by_reason/{out['error']['type']}"] += 1
                else:
                    dataset_cost += rec.get("cost_usd") or 0.0
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return counts, dataset_cost


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    c, teacher = cfg.collect, cfg.teacher
    if c.mode not in MODES:
        raise ValueError(f"collect.mode must be one of {', '.join(MODES)}, got {c.mode!r}")
    sources = []
    for key, node in cfg.data.sources.items():
        if node.get("_target_") is None:
            log.warning("data.sources.%s is set (by an experiment?) but not selected in data/source: ignored", key)
            continue
        sources.append(instantiate(node))
    if not sources:
        raise ValueError("no data sources selected: set data/source=[...]")
    prompts, duplicates = mix(sources, dedup=c.dedup_prompts)
    if c.limit is not None:
        prompts = prompts[: c.limit]
    per_source = Counter(p.source for p in prompts)
    malformed = {s.name: dict(s.dropped) for s in sources if s.dropped}
    requests = build_requests(prompts, teacher)

    cache = AnswerCache(c.cache_dir)
    before = cache.get_many(r.key for r in requests)
    cached = {k for k, (status, _, _) in before.items() if status == "answered"}
    todo = [r for r in requests if r.key not in cached and (c.retry_failed or r.key not in before)]
    held: dict[str, dict] = {}  # keys an unfinished batch already carries: sending them online would pay twice
    if c.mode == "online":
        in_batches = cache.pending_in_batches()
        held = {r.key: {"type": "InOpenBatch", "status": None, "attempts": 0, "message": "an unfinished batch in "
                        "the cache carries this request: run with collect.mode=batch to collect it"}
                for r in todo if r.key in in_batches}
        todo = [r for r in todo if r.key not in held]
    online, batch = price_for(c.pricing, teacher.model), price_for(c.pricing, teacher.model, "batch")
    counter = token_counter(teacher) if c.dry_run else None  # outside a dry run the logged estimate is rough
    est = estimate(todo, c.expected_output_tokens or teacher.max_tokens, online, batch, counter)
    log.info("collect: %d prompts, %d requests, %d already answered in %s, %d to send; estimate %s",
             len(prompts), len(requests), len(cached), c.cache_dir, len(todo), est)
    inputs = {"sources": [s.name for s in sources], "teacher": teacher.name, "model": teacher.model,
              "mode": c.mode, "cache_dir": str(c.cache_dir)}
    base_counts = {"per_source": dict(per_source), "duplicate_prompts_dropped": duplicates,
                   "malformed_rows_skipped": malformed, "prompts": len(prompts), "requests": len(requests),
                   "cached": len(cached), "to_send": len(todo)}
    if c.dry_run:  # no manifest: a dry run is not a finished collect run that curate could pick up
        tracker.log({f"collect/dry_run/{k}": v for k, v in est.items()})
        write_json(run_dir / ESTIMATE, {"inputs": inputs, "counts": base_counts, "estimate": est})
        cache.close()
        print(f"dry run: {len(prompts)} prompts, {len(cached)} already answered, {len(todo)} to send to "
              f"{teacher.model}: about {est['est_prompt_tokens']:,} prompt + {est['est_completion_tokens']:,} "
              f"completion tokens, ${est['est_cost_usd']:,.2f} online or ${est['est_cost_usd_batch']:,.2f} as "
              f"batches" + ("" if est["price_known"] else " (no price for this model in collect.pricing)")
              + f"; prompt tokens counted with {est['token_counter']}"
              + (f" (fallback: {est['token_counter_fallback']})" if est["token_counter_fallback"] else ""))
        return {"dry_run": True, **base_counts, **{k: v for k, v in est.items() if k != "requests"}}

    ledger = Ledger(batch if c.mode == "batch" else online)

    def on_progress(snapshot: dict[str, Any]) -> None:
        write_json(run_dir / LEDGER, {"mode": c.mode, "model": teacher.model, **snapshot})
        tracker.log({f"collect/live/{k}": v for k, v in snapshot.items()})

    if c.mode == "batch" and teacher.server:
        raise ValueError(f"collect.mode=batch needs an endpoint with the Batch API; teacher '{teacher.name}' "
                         "starts a local llama.cpp server, which has none: use collect.mode=online")
    server = nullcontext(teacher.base_url)
    if teacher.server and todo:
        server = instantiate(teacher.server, log_path=run_dir / "teacher_server.log")
    try:
        with server as base_url:
            extra = asyncio.run(send(cfg, todo, base_url, cache, ledger, on_progress)) if todo else {"not_sent": {}}
        by_others = extra.pop("by_others", set())  # answered by a concurrent collector sharing the cache
        rows = cache.get_many(r.key for r in requests)
    finally:
        on_progress(ledger.snapshot())
        cache.close()
    out = run_dir / RESPONSES
    counts, dataset_cost = write_responses(out, requests, rows, cached | by_others, {**held, **extra.pop("not_sent")})
    live = ledger.snapshot()
    stats = {
        "prompts": len(prompts),
        "answered": counts["answered"],
        "failed": counts["failed"],
        "cached": counts["cached"],
        "sent": len(todo) - len(by_others),
        "answered_by_other_collector": len(by_others),
        "prompt_tokens": live["prompt_tokens"],
        "completion_tokens": live["completion_tokens"],
        "cost_usd": live["cost_usd"],  # spent by this run
        "dataset_cost_usd": round(dataset_cost, 6),  # all answers, cached ones included
        "requests_per_s": live["requests_per_s"],
        "retried_errors": live["errors"],
        **extra,
    }
    reasons = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("failed_by_reason/")}
    tracker.log({f"collect/{k}": v for k, v in stats.items()})
    tracker.table("collect/per_source", [{"source": s, "prompts": n} for s, n in sorted(per_source.items())])
    write_manifest(
        run_dir, "collect", config_hash(cfg), inputs=inputs, outputs={"responses": out, "ledger": run_dir / LEDGER},
        counts={**base_counts, **stats, "failed_by_reason": reasons}, metrics={"estimate": est},
    )
    return {"responses": str(out), "mode": c.mode, **stats, "failed_by_reason": reasons}
