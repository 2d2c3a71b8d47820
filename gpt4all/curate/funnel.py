"""The funnel: rows in and out of each step, per source, and drops per reason; as JSON, markdown and CSV.

Built from per-row verdicts (step index, reason), so its counts add up to the input by construction.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


class Funnel:
    def __init__(self, steps: list[str], totals: dict[str, int], drops: dict[tuple[str, str, str], int]):
        self.steps = steps          # in run order; the last one is the source rule
        self.totals = totals        # source -> rows in
        self.drops = drops          # (source, step, reason) -> rows dropped

    @classmethod
    def from_arrays(cls, steps: list[str], sources: list[str], source_code: np.ndarray, step: np.ndarray,
                    reason_code: np.ndarray, reasons: list[str]) -> Funnel:
        totals = {sources[c]: int(n) for c, n in zip(*np.unique(source_code, return_counts=True))}
        d = step >= 0
        key = np.stack([source_code[d], step[d], reason_code[d]], axis=1)
        drops: dict[tuple[str, str, str], int] = {}
        if len(key):
            uniq, counts = np.unique(key, axis=0, return_counts=True)
            drops = {(sources[s], steps[k], reasons[r]): int(n) for (s, k, r), n in zip(uniq, counts)}
        return cls(steps, totals, drops)

    def dropped_at(self, source: str, step: str) -> int:
        return sum(n for (s, k, _), n in self.drops.items() if s == source and k == step)

    def step_rows(self) -> list[dict[str, Any]]:
        """One row per (step, source) and per step for all sources: rows in, out and dropped."""
        out = []
        for source in [*sorted(self.totals), "all"]:
            srcs = sorted(self.totals) if source == "all" else [source]
            rows_in = sum(self.totals[s] for s in srcs)
            for step in self.steps:
                dropped = sum(self.dropped_at(s, step) for s in srcs)
                out.append({"step": step, "source": source, "in": rows_in, "out": rows_in - dropped,
                            "dropped": dropped})
                rows_in -= dropped
        return out

    def to_dict(self) -> dict[str, Any]:
        per_source = {}
        reasons: dict[str, int] = defaultdict(int)
        for s in sorted(self.totals):
            dropped: dict[str, int] = defaultdict(int)
            for (src, _, r), n in self.drops.items():
                if src == s:
                    dropped[r] += n
                    reasons[r] += n
            per_source[s] = {"total": self.totals[s], "kept": self.totals[s] - sum(dropped.values()),
                             "dropped": dict(sorted(dropped.items()))}
        total = sum(self.totals.values())
        cleaned = total - sum(n for (_, k, _), n in self.drops.items() if k != self.steps[-1])
        kept = sum(v["kept"] for v in per_source.values())
        return {
            "total": total, "kept": kept, "dropped": dict(sorted(reasons.items())), "per_source": per_source,
            "stages": {"raw": total, "cleaned": cleaned, "final": kept},  # the paper's 1M -> 806,199 -> 437,605
            "steps": self.step_rows(),
            "by_reason": [{"source": s, "step": k, "reason": r, "dropped": n}
                          for (s, k, r), n in sorted(self.drops.items())],
        }

    def to_markdown(self) -> str:
        d = self.to_dict()
        sources = sorted(self.totals)
        st = d["stages"]
        lines = ["# Curation funnel", "",
                 (f"raw {st['raw']:,} -> cleaned {st['cleaned']:,} (failed, malformed, duplicate rows removed) -> "
                  f"final {st['final']:,} (after the source rule)"), "",
                 "## Rows after each step", "", "| step | " + " | ".join(sources) + " | all |",
                 "|---|" + "---|" * (len(sources) + 1)]
        lines.append("| input | " + " | ".join(f"{self.totals[s]:,}" for s in sources) + f" | {st['raw']:,} |")
        by = {(r["step"], r["source"]): r["out"] for r in d["steps"]}
        for step in self.steps:
            lines.append(f"| {step} | " + " | ".join(f"{by[step, s]:,}" for s in [*sources, "all"]) + " |")
        reasons = list(d["dropped"])
        lines += ["", "## Drops per reason", "", "| source | total | " + " | ".join(reasons) + " | kept |",
                  "|---|---|" + "---|" * (len(reasons) + 1)]
        rows = [(s, v["total"], v["dropped"], v["kept"]) for s, v in d["per_source"].items()]
        rows.append(("**all**", d["total"], d["dropped"], d["kept"]))
        for s, total, dropped, kept in rows:
            lines.append(f"| {s} | {total} | " + " | ".join(str(dropped.get(r, 0)) for r in reasons) + f" | {kept} |")
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> Path:
        """Long format: one line per (step, source) with in/out/dropped, then one per (step, source, reason)."""
        d = self.to_dict()
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "source", "reason", "in", "out", "dropped"])
            for r in d["steps"]:
                w.writerow([r["step"], r["source"], "", r["in"], r["out"], r["dropped"]])
            for r in d["by_reason"]:
                w.writerow([r["step"], r["source"], r["reason"], "", "", r["dropped"]])
        return Path(path)
