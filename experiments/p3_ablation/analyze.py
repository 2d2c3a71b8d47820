"""p3_ablation: the effect of keeping P3, with the training run (seed) as the unit of replication.

Reads outputs/p3_ablation (run.sh) and writes experiments/p3_ablation/results.json. Per seed: training tokens
of each arm (from each run's lightning/metrics.csv) and the median paired ratio of Self-Instruct perplexities
ppl(with P3) / ppl(without P3) with its bootstrap CI over eval items (gpt4all-evaluate's tests). Across seeds:
the mean log ratio with a t interval over the seeds (n - 1 degrees of freedom), reported as a ratio.
Usage: python experiments/p3_ablation/analyze.py [outputs/p3_ablation]
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from scipy import stats

from gpt4all.core.metrics import ratio_ci

HERE = Path(__file__).resolve().parent


def train_summary(run_dir: Path) -> dict:
    """Steps, tokens (all real tokens of the packed rows, and the loss-carrying ones) and losses of a run."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tokens, losses = 0.0, []
    with (run_dir / "lightning" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("train/tokens_per_s") and row.get("train/s_per_batch"):
                tokens += float(row["train/tokens_per_s"]) * float(row["train/s_per_batch"])
            if row.get("train/loss"):
                losses.append(float(row["train/loss"]))
    m = manifest["metrics"]
    return {"steps": m["steps"], "tokens": round(tokens), "label_tokens": m["tokens_seen"],
            "train_examples": m["train_examples"], "val_examples": m["val_examples"],
            "first_train_loss": losses[0] if losses else None, "last_train_loss": losses[-1] if losses else None,
            "val_loss": m["val_loss"]}


def main(out: Path) -> None:
    results = json.loads((out / "evaluate" / "results.json").read_text())
    models = results["models"]
    seeds = sorted({int(name.rsplit("_s", 1)[1]) for name in models if "_p3_s" in name})
    per_seed = []
    for s in seeds:
        with_name, without_name = f"with_p3_s{s}", f"without_p3_s{s}"
        a, b = models[with_name]["perplexity"], models[without_name]["perplexity"]
        test = next(t for t in results["tests"] if {t["a"], t["b"]} == {with_name, without_name})
        effect = ratio_ci(a, b, seed=0)  # with / without: above 1, P3 hurts
        per_seed.append({
            "seed": s, "ratio_with_over_without": effect["ratio"], "items_ci": [effect["ci_low"], effect["ci_high"]],
            "share_with_higher": sum(x > y for x, y in zip(a, b)) / len(a),
            "median_with": models[with_name]["median_perplexity"],
            "median_without": models[without_name]["median_perplexity"],
            "wilcoxon_p_without_lower": test["p_value"],
            "train": {"with_p3": train_summary(out / "with_p3" / f"train_seed{s}"),
                      "without_p3": train_summary(out / "without_p3" / f"train_seed{s}")},
        })
    logs = [math.log(r["ratio_with_over_without"]) for r in per_seed]
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1)) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    base = models.get("base") or next((v for k, v in models.items() if k.startswith("base")), None)
    summary = {
        "seeds": seeds, "examples": results["examples"], "suite": results["suite"], "method": results["method"],
        "ratio_with_over_without": math.exp(mean), "ci_over_seeds": [math.exp(mean - half), math.exp(mean + half)],
        "ci_method": f"t interval on the mean log ratio over {n} seeds (df {n - 1}), 95 %",
        "sd_log_ratio_over_seeds": sd, "base_median": base["median_perplexity"] if base else None,
        "per_seed": per_seed, "loadavg_at_analysis": os.getloadavg(),
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("seed | with/without median paired ratio [item CI] | share with higher | train tokens with / without "
          "(label tokens) | val loss with / without")
    for r in per_seed:
        w, wo = r["train"]["with_p3"], r["train"]["without_p3"]
        print(f"{r['seed']} | {r['ratio_with_over_without']:.3f} [{r['items_ci'][0]:.3f}, {r['items_ci'][1]:.3f}] | "
              f"{r['share_with_higher']:.0%} | {w['tokens']} / {wo['tokens']} ({w['label_tokens']} / "
              f"{wo['label_tokens']}) | {w['val_loss']} / {wo['val_loss']}")
    lo, hi = summary["ci_over_seeds"]
    print(f"over {n} seeds: ratio {summary['ratio_with_over_without']:.3f}, 95 % CI [{lo:.3f}, {hi:.3f}] "
          f"(perplexity with P3 {100 * (summary['ratio_with_over_without'] - 1):+.1f} % "
          f"[{100 * (lo - 1):+.1f}, {100 * (hi - 1):+.1f}])")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/p3_ablation"))
