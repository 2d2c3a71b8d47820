"""evaluate: setup (suite, models) -> run (perplexity per model) -> save (JSON, CSV, plot, manifest)."""

from __future__ import annotations

import csv
import gc
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.manifest import read_manifest, write_json, write_manifest
from gpt4all.core.metrics import median, perplexities, response_nll_gguf, response_nll_hf
from gpt4all.core.models import load_model, load_pretrained_dir, load_tokenizer
from gpt4all.core.tracking import Tracker
from gpt4all.evaluate.plots import perplexity_plot
from gpt4all.evaluate.suites import load_suite

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    name: str
    kind: str  # base | hf | gguf
    path: str | None
    template: Any


def candidates(cfg: DictConfig) -> list[Candidate]:
    """The models to score: the base model, and the finetuned / quantized runs named or latest."""
    ev = cfg.evaluate
    out = [Candidate(f"base:{cfg.model.name}", "base", None, cfg.model.template)] if ev.include_base else []

    def run_dir(explicit: str | None, stage: str) -> Path | None:
        if explicit:
            return Path(explicit)
        return latest_run(cfg.paths.output_dir, stage) if ev.latest else None

    train_dir = run_dir(ev.train_dir, "train")
    if train_dir:
        m = read_manifest(train_dir, "train")
        out.append(Candidate("finetuned", "hf", m["outputs"]["merged"], OmegaConf.create(m["inputs"]["template"])))
    quant_dir = run_dir(ev.quantize_dir, "quantize")
    if quant_dir:
        m = read_manifest(quant_dir, "quantize")
        if "gguf" in m["outputs"]:
            name = Path(m["outputs"]["gguf"]).stem.replace("model-", "finetuned-")
            out.append(Candidate(name, "gguf", m["outputs"]["gguf"], OmegaConf.create(m["inputs"]["template"])))
    if not out:
        raise ValueError("nothing to evaluate: set evaluate.include_base, evaluate.train_dir/quantize_dir or evaluate.latest")
    return out


def score(c: Candidate, cfg: DictConfig, pairs: list[tuple[str, str]]) -> list[float]:
    ev = cfg.eval
    if c.kind == "gguf":
        return response_nll_gguf(c.path, c.template, pairs, max_length=ev.max_length, n_threads=ev.n_threads)
    if c.kind == "base":
        model, tok = load_model(cfg.model, cfg.paths.cache_dir, seed=cfg.seed), load_tokenizer(cfg.model, cfg.paths.cache_dir)
    else:
        model, tok = load_pretrained_dir(c.path)
    try:
        return response_nll_hf(model, tok, c.template, pairs, max_length=ev.max_length, batch_size=ev.batch_size)
    finally:
        del model
        gc.collect()


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    examples = load_suite(cfg.eval)
    pairs = [(e.prompt, e.reference) for e in examples]
    models = candidates(cfg)
    clip = cfg.eval.clip

    results: dict[str, dict[str, Any]] = {}
    rows = []
    for c in models:
        log.info("[evaluate] scoring %s (%s) on %d examples", c.name, c.kind, len(pairs))
        nll = score(c, cfg, pairs)
        ppl = perplexities(nll, clip=clip)
        nan = sum(math.isnan(x) for x in nll)
        results[c.name] = {
            "kind": c.kind, "path": c.path, "median_perplexity": round(median(ppl), 4),
            "mean_perplexity": round(sum(ppl) / len(ppl), 4), "clipped": sum(p >= clip for p in ppl), "nan": nan,
            "perplexity": ppl,
        }
        rows += [{"id": e.id, "model": c.name, "nll": n, "perplexity": p} for e, n, p in zip(examples, nll, ppl)]

    write_json(run_dir / "results.json", {"suite": cfg.eval.name, "examples": len(examples), "clip": clip, "models": results})
    with (run_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "model", "nll", "perplexity"])
        writer.writeheader()
        writer.writerows(rows)
    plot = perplexity_plot({k: v["perplexity"] for k, v in results.items()}, clip, run_dir / "perplexity.png",
                           f"{cfg.eval.name}: {len(examples)} examples")

    medians = {name: r["median_perplexity"] for name, r in results.items()}
    tracker.log({f"evaluate/median_perplexity/{k}": v for k, v in medians.items()})
    tracker.table("evaluate/perplexity", rows)
    tracker.image("evaluate/perplexity_plot", plot)
    write_manifest(
        run_dir, "evaluate", config_hash(cfg),
        inputs={"suite": cfg.eval.name, "models": {c.name: c.path for c in models}},
        outputs={"results_json": run_dir / "results.json", "results_csv": run_dir / "results.csv", "plot": plot},
        counts={"examples": len(examples)},
        metrics={"median_perplexity": medians},
    )
    return {"plot": str(plot), "examples": len(examples), "median_perplexity": medians}
