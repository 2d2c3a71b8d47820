"""evaluate: setup (suite, models) -> run (perplexity per model and method) -> compare (tests, trade-offs)
-> save (JSON, CSV, plot, manifest, W&B tables and image)."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from gpt4all.core.config import config_hash
from gpt4all.core.lm import load_lm, score_divergence, score_nll
from gpt4all.core.manifest import write_json, write_manifest
from gpt4all.core.metrics import compare_perplexities, effect_line, perplexities, perplexity_summary
from gpt4all.core.tracking import Tracker
from gpt4all.evaluate.models import Candidate, candidates, comparisons
from gpt4all.evaluate.plots import perplexity_plot
from gpt4all.evaluate.suites import load_suite

log = logging.getLogger(__name__)
KLD_COLUMNS = ("tokens", "mean_kld", "p99_kld", "same_top_pct", "rms_delta_p_pct", "ppl_ratio")


def nan_perplexity(ev: Any) -> float:
    """What a NaN score becomes: eval.nan_perplexity, else clip (conditional) or 0 (gpt4all_2023, whose figure
    script's np.nan_to_num(x, 100) passed 100 as `copy`, so NaN became 0)."""
    if ev.nan_perplexity is not None:
        return float(ev.nan_perplexity)
    return 0.0 if ev.method == "gpt4all_2023" else float(ev.clip)


def score(c: Candidate, cfg: DictConfig, examples: list) -> list[float]:
    ev = cfg.eval
    lm = load_lm(c.spec, cfg.model, cfg.paths.cache_dir, seed=cfg.seed, n_threads=ev.n_threads, n_ctx=ev.n_ctx)
    try:
        return score_nll(lm, ev.method, [e.triple() for e in examples], c.spec.template, max_length=ev.max_length,
                         batch_size=ev.batch_size)
    finally:
        lm.close()


QUANTIZED_KINDS = ("gguf", "gptq", "bnb")


def is_quantization(a: Candidate, b: Candidate) -> bool:
    """a is a quantized model compared with an unquantized one: a two-sided test of what quantization costs
    (not a one-sided "lower than" expected to fail)."""
    return a.role == "quantized" or (a.kind in QUANTIZED_KINDS and b.kind not in QUANTIZED_KINDS)


def divergences(cfg: DictConfig, models: list[Candidate], examples: list) -> dict[str, dict[str, Any]]:
    """KL divergence of each model that names its unquantized reference (a quantize run's artifact, or
    `evaluate.models.X.reference`) to that reference, in the same engine, on the `conditional` response tokens."""
    ev, out = cfg.eval, {}
    if not cfg.evaluate.kld:
        return out
    for c in models:
        if c.spec.reference is None:
            continue
        log.info("[evaluate] KL divergence of %s to %s", c.name, c.spec.reference.path)
        ref = load_lm(c.spec.reference, cfg.model, cfg.paths.cache_dir, n_threads=ev.n_threads, n_ctx=ev.n_ctx)
        try:
            quant = load_lm(c.spec, cfg.model, cfg.paths.cache_dir, n_threads=ev.n_threads, n_ctx=ev.n_ctx)
            try:
                div = score_divergence(ref, quant, [e.triple() for e in examples], c.spec.template, ev.max_length)
            finally:
                quant.close()
        finally:
            ref.close()
        out[c.name] = {"reference": c.spec.reference.path, **div.summary()}
    return out


def print_divergences(div: dict[str, dict[str, Any]]) -> None:
    t = Table(title="KL divergence to the unquantized model (same engine, response tokens)")
    for col in ("model", "tokens", "mean KLD [95% CI]", "99% KLD", "same top", "RMS dp", "PPL ratio [95% CI]"):
        t.add_column(col)
    for name, d in div.items():
        t.add_row(name, str(d["tokens"]), f"{d['mean_kld']:.4f} [{d['mean_kld_ci'][0]:.4f}, {d['mean_kld_ci'][1]:.4f}]",
                  f"{d['p99_kld']:.3f}", f"{d['same_top_pct']:.1f} %", f"{d['rms_delta_p_pct']:.2f} %",
                  f"{d['ppl_ratio']:.4f} [{d['ppl_ratio_ci'][0]:.4f}, {d['ppl_ratio_ci'][1]:.4f}]")
    Console(width=140).print(t)


def tradeoffs(models: list[Candidate], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Size, generation speed and perplexity change of each quantized model vs. the unquantized finetuned one."""
    ref = next((c.name for c in models if c.role == "finetuned"), None)
    rows = []
    for c in models:
        if c.role != "quantized" or not c.quant:
            continue
        row = {"model": c.name, "scheme": c.quant.get("scheme"), "size_mb": c.quant.get("size_mb"),
               "unquantized_mb": c.quant.get("unquantized_mb"), "tokens_per_s": c.quant.get("tokens_per_s"),
               "unquantized_tokens_per_s": c.quant.get("unquantized_tokens_per_s"),
               "median_perplexity": results[c.name]["median_perplexity"]}
        if ref:
            base = results[ref]
            row["median_change_pct"] = round(100 * (row["median_perplexity"] / base["median_perplexity"] - 1), 2)
            row["mean_change_pct"] = round(100 * (results[c.name]["mean_perplexity"] / base["mean_perplexity"] - 1), 2)
        rows.append(row)
    return rows


def print_report(suite: str, method: str, results: dict[str, dict[str, Any]], tests: list[dict[str, Any]],
                 alpha: float) -> None:
    t = Table(title=f"ground-truth perplexity: {suite} ({method})")
    for col in ("model", "mean", "median", "share clipped", "nan"):
        t.add_column(col)
    for name, r in results.items():
        t.add_row(name, f"{r['mean_perplexity']:.3f}", f"{r['median_perplexity']:.3f}", f"{r['share_clipped']:.1%}",
                  str(r["nan"]))
    console = Console(width=140)
    console.print(t)
    for test in tests:
        verdict = "yes" if test["p_value"] < alpha else "no"
        question = "differs from" if test["alternative"] == "two-sided" else "lower than"
        console.print(f"  {effect_line(test)}\n    {test['a']} {question} {test['b']}? {verdict} at alpha {alpha:g} "
                      f"(lower on {test['share_lower']:.0%} of examples)")


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    ev = cfg.eval
    examples = load_suite(ev)
    models = candidates(cfg)
    clip, nan_value = ev.clip, nan_perplexity(ev)

    results: dict[str, dict[str, Any]] = {}
    rows = []
    for c in models:
        log.info("[evaluate] scoring %s (%s, %s) on %d examples", c.name, c.kind, ev.method, len(examples))
        start = time.perf_counter()
        nll = score(c, cfg, examples)
        seconds = time.perf_counter() - start
        ppl = perplexities(nll, clip=clip, nan_value=nan_value)
        nan = sum(math.isnan(x) for x in nll)
        s = perplexity_summary(ppl, clip, nan)
        results[c.name] = {
            "kind": c.kind, "path": c.path, "lora": c.spec.lora, "median_perplexity": round(s["median"], 4),
            "mean_perplexity": round(s["mean"], 4), "share_clipped": round(s["share_clipped"], 4),
            "clipped": sum(p >= clip for p in ppl), "nan": nan, "seconds": round(seconds, 2),
            "perplexity": ppl, "nll": [None if math.isnan(x) else x for x in nll],
        }
        rows += [{"id": e.id, "model": c.name, "nll": n, "perplexity": p} for e, n, p in zip(examples, nll, ppl)]

    tests = []
    by_name = {c.name: c for c in models}
    for a, b in comparisons(cfg, models):
        role = "quantization" if is_quantization(by_name[a], by_name[b]) else "comparison"
        test = compare_perplexities(results[a]["perplexity"], results[b]["perplexity"], paired=cfg.evaluate.paired,
                                    alternative="two-sided" if role == "quantization" else "less", seed=cfg.seed)
        tests.append({"a": a, "b": b, "role": role, **test, "summary": effect_line({"a": a, "b": b, "role": role,
                                                                                    **test})})
    trade = tradeoffs(models, results)
    div = divergences(cfg, models, examples)
    for row in trade:
        row.update({f"kld_{k}": div[row["model"]][k] for k in KLD_COLUMNS if row["model"] in div})

    write_json(run_dir / "results.json", {"suite": ev.name, "method": ev.method, "examples": len(examples),
                                          "clip": clip, "nan_perplexity": nan_value, "models": results,
                                          "tests": tests, "tradeoffs": trade, "divergence": div})
    with (run_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "model", "nll", "perplexity"])
        writer.writeheader()
        writer.writerows(rows)
    plot = perplexity_plot({k: v["perplexity"] for k, v in results.items()}, clip, run_dir / "perplexity.png",
                           f"{ev.name} ({ev.method}): {len(examples)} examples")
    print_report(ev.name, ev.method, results, tests, cfg.evaluate.alpha)
    if div:
        print_divergences(div)

    medians = {name: r["median_perplexity"] for name, r in results.items()}
    summary_rows = [{"model": k, **{f: r[f] for f in ("kind", "mean_perplexity", "median_perplexity", "share_clipped",
                                                          "nan", "seconds")}} for k, r in results.items()]
    tracker.log({f"evaluate/median_perplexity/{k}": v for k, v in medians.items()})
    tracker.log({f"evaluate/p_value/{t['a']}<{t['b']}": t["p_value"] for t in tests})
    tracker.log({f"evaluate/ratio/{t['a']}:{t['b']}": t["ratio"] for t in tests})
    tracker.table("evaluate/perplexity", rows)
    tracker.table("evaluate/summary", summary_rows)
    tracker.table("evaluate/tests", tests)
    tracker.table("evaluate/tradeoffs", trade)
    tracker.image("evaluate/perplexity_plot", plot)
    if div:
        tracker.summary({f"evaluate/kld/{name}/{k}": d[k] for name, d in div.items() for k in KLD_COLUMNS})
        tracker.table("evaluate/kld", [{"model": name, **{k: d[k] for k in ("reference", *KLD_COLUMNS)}}
                                       for name, d in div.items()])
    write_manifest(
        run_dir, "evaluate", config_hash(cfg),
        inputs={"suite": ev.name, "method": ev.method,
                "models": {c.name: {"kind": c.kind, "path": c.path, "lora": c.spec.lora} for c in models}},
        outputs={"results_json": run_dir / "results.json", "results_csv": run_dir / "results.csv", "plot": plot},
        counts={"examples": len(examples)},
        metrics={"median_perplexity": medians, "tests": tests,
                 "kld": {name: {k: d[k] for k in KLD_COLUMNS} for name, d in div.items()}},
    )
    return {"plot": str(plot), "examples": len(examples), "method": ev.method, "median_perplexity": medians,
            "p_values": {f"{t['a']} < {t['b']}": round(t["p_value"], 5) for t in tests},
            "effects": [t["summary"] for t in tests]}
