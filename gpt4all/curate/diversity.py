"""Per-source diversity and the rule that drops a whole homogeneous source (the paper's P3 decision).

Measured on a seeded sample of the same size from each source (distinct-n depends on sample size):
- distinct_1 / distinct_2: unique word 1-/2-grams over the first `distinct_budget` n-grams of the responses
- unique_response_share: distinct answers (normalised) / answers (low: the same few short answers)
- mean_similarity: mean pairwise cosine of prompt+response embeddings (high: one dense "ball" on the map)
- length_cv: std / mean of response length in tokens (low: answers all of one length); median_tokens too
- top_prefix_share: share of prompts starting with the source's most common 3-word prefix (a template)
- compression_ratio: raw / zlib-compressed size of the responses joined (high: redundant text)
A source is flagged when at least `min_failed` of the configured thresholds fail; with `action: drop` all
its rows are dropped with reason `low_diversity_source`, and diversity.md shows the evidence.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import numpy as np

from gpt4all.curate.filters import TOKEN_RE

# metric -> (direction, threshold key): "min" fails below the threshold, "max" fails above it
CHECKS = {
    "distinct_2": ("min", "distinct_2_min"),
    "unique_response_share": ("min", "unique_response_share_min"),
    "mean_similarity": ("max", "mean_similarity_max"),
    "length_cv": ("min", "length_cv_min"),
    "median_tokens": ("min", "median_tokens_min"),
    "top_prefix_share": ("max", "top_prefix_share_max"),
    "compression_ratio": ("max", "compression_ratio_max"),
}


def distinct_n(token_lists: list[list[str]], n: int, budget: int | None = None) -> float:
    """Unique n-grams / all n-grams, over the first `budget` n-grams (a fixed budget keeps sources comparable)."""
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)][:budget]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_cosine(unit: np.ndarray) -> float:
    """Exact mean cosine over all pairs of unit vectors, in O(n): (|sum|^2 - n) / (n (n - 1))."""
    n = len(unit)
    if n < 2:
        return float("nan")
    s = unit.sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))


def source_metrics(prompts: list[str], responses: list[str], emb: np.ndarray, budget: int = 5000) -> dict[str, Any]:
    toks = [TOKEN_RE.findall(r.lower()) for r in responses]
    lengths = np.array([len(t) for t in toks], float)
    prefixes = Counter(" ".join(p.lower().split()[:3]) for p in prompts)
    raw = "\n".join(responses).encode("utf-8", "replace")
    return {
        "rows_sampled": len(responses),
        "distinct_1": round(distinct_n(toks, 1, budget), 4),
        "distinct_2": round(distinct_n(toks, 2, budget), 4),
        "unique_response_share": round(len({" ".join(t) for t in toks}) / max(1, len(toks)), 4),
        "mean_similarity": round(mean_pairwise_cosine(emb), 4),
        "length_cv": round(float(lengths.std() / lengths.mean()) if lengths.mean() > 0 else 0.0, 4),
        "median_tokens": float(np.median(lengths)) if len(lengths) else 0.0,
        "top_prefix": prefixes.most_common(1)[0][0] if prefixes else "",
        "top_prefix_share": round(prefixes.most_common(1)[0][1] / len(prompts), 4) if prompts else 0.0,
        "compression_ratio": round(len(raw) / max(1, len(zlib.compress(raw, 6))), 3),
    }


def judge(metrics: dict[str, dict[str, Any]], counts: dict[str, int], cfg: Any) -> dict[str, dict[str, Any]]:
    """Apply the rule to each source's metrics; returns per source: checks, failed, flagged, dropped, why."""
    out: dict[str, dict[str, Any]] = {}
    for source, m in metrics.items():
        checks = {}
        for metric, (direction, key) in CHECKS.items():
            limit = cfg.thresholds.get(key)
            if limit is None:
                continue
            value = m[metric]
            fail = value < limit if direction == "min" else value > limit
            checks[metric] = {"value": value, direction: limit, "failed": bool(fail)}
        failed = [k for k, c in checks.items() if c["failed"]]
        judged = counts.get(source, 0) >= cfg.min_rows
        flagged = judged and len(failed) >= cfg.min_failed
        if source in cfg.keep_sources:
            why, drop = "kept: listed in keep_sources", False
        elif source in cfg.drop_sources:
            why, drop = "dropped: listed in drop_sources", True
        elif not judged:
            why, drop = f"not judged: {counts.get(source, 0)} rows < min_rows {cfg.min_rows}", False
        elif flagged:
            why = f"low diversity: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)})"
            drop = cfg.action == "drop"
        else:
            why, drop = f"diverse enough: {len(failed)} of {len(checks)} checks failed (< {cfg.min_failed})", False
        out[source] = {"rows": counts.get(source, 0), "metrics": m, "checks": checks, "failed": failed,
                       "flagged": bool(flagged), "dropped": bool(drop), "why": why}
    return out


def to_markdown(report: dict[str, dict[str, Any]]) -> str:
    metrics = list(CHECKS) + ["distinct_1"]
    lines = ["# Source diversity", "", "| source | rows | " + " | ".join(metrics) + " | decision |",
             "|---|---|" + "---|" * (len(metrics) + 1)]
    for source, r in report.items():
        cells = []
        for k in metrics:
            c = r["checks"].get(k)
            v = r["metrics"][k]
            cells.append(f"**{v}** (limit {c.get('min', c.get('max'))})" if c and c["failed"] else str(v))
        lines.append(f"| {source} | {r['rows']} | " + " | ".join(cells) + f" | {r['why']} |")
    lines += ["", "Bold: a failed check. Measured on a seeded sample of the same size from each source."]
    return "\n".join(lines) + "\n"
