"""Effect sizes for an evaluate run: per model pair, the mean paired difference in NLL (nats per response token)
with a seeded bootstrap 95 % CI, the median perplexity ratio, the share of items where `a` is lower, the
matched-pairs rank-biserial correlation and the stage's one-sided Wilcoxon p-value.

Usage: python experiments/base_to_assistant/effect.py outputs/.../evaluate/results.json effect.json > results.md
(the numbers as JSON, a markdown table on stdout)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def effect(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    ranks = stats.rankdata(np.abs(d[d != 0]))
    plus, minus = ranks[d[d != 0] > 0].sum(), ranks[d[d != 0] < 0].sum()
    return {"n": len(d), "mean_nll_diff": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)),
            float(np.percentile(boot, 97.5))], "share_a_lower": float((d < 0).mean()),
            "rank_biserial": float((minus - plus) / (minus + plus)) if plus + minus else 0.0}


def main(path: Path, out_json: Path) -> None:
    res = json.loads(path.read_text())
    models = res["models"]
    out = {"examples": res["examples"], "method": res["method"],
           "median_perplexity": {k: v["median_perplexity"] for k, v in models.items()}, "pairs": []}
    for t in res["tests"]:
        a, b = t["a"], t["b"]
        nll_a = [float("nan") if x is None else x for x in models[a]["nll"]]
        nll_b = [float("nan") if x is None else x for x in models[b]["nll"]]
        out["pairs"].append({"a": a, "b": b, **effect(nll_a, nll_b), "wilcoxon_p_a_lower": t["p_value"],
                             "median_ppl_ratio": models[a]["median_perplexity"] / models[b]["median_perplexity"]})
    out_json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{res['examples']} Self-Instruct items, method `{res['method']}`, perplexity clipped at {res['clip']}.\n")
    print("| model | median perplexity | mean perplexity | clipped |\n|---|---|---|---|")
    for name, m in models.items():
        print(f"| {name} | {m['median_perplexity']:.3f} | {m['mean_perplexity']:.3f} | {m['clipped']} |")
    print("\n| a vs b | mean NLL diff a-b (nats/token) [95 % CI] | median ppl ratio | share a lower | "
          "rank-biserial | Wilcoxon p (a lower) |\n|---|---|---|---|---|---|")
    for r in out["pairs"]:
        print(f"| {r['a']} vs {r['b']} | {r['mean_nll_diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | "
              f"{r['median_ppl_ratio']:.3f} | {r['share_a_lower']:.1%} | {r['rank_biserial']:+.3f} | "
              f"{r['wilcoxon_p_a_lower']:.2g} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
