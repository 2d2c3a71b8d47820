"""Curation filters. A filter is a tiny class: `filter(row) -> True | (False, reason)`; `Funnel` counts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

Row = dict[str, Any]
Verdict = bool | tuple[bool, str]


class Filter:
    """Base class: subclasses return True to keep a row, or (False, reason) to drop it."""

    name = "filter"

    def filter(self, row: Row) -> Verdict:
        raise NotImplementedError


class FailedFilter(Filter):
    """The request failed (API error, timeout) or returned no content."""

    name = "failed"

    def filter(self, row: Row) -> Verdict:
        if row.get("error"):
            return False, f"failed:{row['error'].get('type', 'error')}"
        return True


class EmptyFilter(Filter):
    """The answer is empty or shorter than min_chars after stripping."""

    name = "empty"

    def __init__(self, min_chars: int = 1):
        self.min_chars = min_chars

    def filter(self, row: Row) -> Verdict:
        text = row.get("response")
        if not isinstance(text, str) or len(text.strip()) < self.min_chars:
            return False, "empty"
        return True


class TruncatedFilter(Filter):
    """The answer hit max_tokens (finish_reason 'length')."""

    name = "truncated"

    def filter(self, row: Row) -> Verdict:
        return (False, "truncated") if row.get("finish_reason") == "length" else True


class RefusalFilter(Filter):
    """The answer refuses ("As an AI language model, I cannot ...")."""

    name = "refusal"

    def __init__(self, patterns: Iterable[str]):
        self.patterns = [p.lower() for p in patterns]

    def filter(self, row: Row) -> Verdict:
        text = (row.get("response") or "").lower()
        return (False, "refusal") if any(p in text for p in self.patterns) else True


class ExactDuplicateFilter(Filter):
    """A (prompt, response) pair seen before, compared after whitespace and case normalisation."""

    name = "duplicate"

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def filter(self, row: Row) -> Verdict:
        key = (" ".join(row["prompt"].lower().split()), " ".join((row.get("response") or "").lower().split()))
        if key in self.seen:
            return False, "duplicate"
        self.seen.add(key)
        return True


def build_filters(curation: Any) -> list[Filter]:
    """The filter chain selected by the `curation` config node, in the order they run."""
    chain: list[Filter] = []
    if curation.drop_failed:
        chain.append(FailedFilter())
    if curation.drop_empty:
        chain.append(EmptyFilter(curation.min_response_chars))
    if curation.drop_truncated:
        chain.append(TruncatedFilter())
    if curation.drop_refusals:
        chain.append(RefusalFilter(curation.refusal_patterns))
    if curation.dedup_exact:
        chain.append(ExactDuplicateFilter())
    return chain


class Funnel:
    """Per-source counts: total, kept, and dropped per reason."""

    def __init__(self) -> None:
        self.total: dict[str, int] = defaultdict(int)
        self.kept: dict[str, int] = defaultdict(int)
        self.dropped: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def apply(self, rows: Iterable[Row], chain: list[Filter]) -> tuple[list[Row], list[Row]]:
        """Run the chain over rows; return (kept, rejects); each reject carries `drop_reason`."""
        kept, rejects = [], []
        for row in rows:
            source = row.get("source", "unknown")
            self.total[source] += 1
            for f in chain:
                verdict = f.filter(row)
                if verdict is not True:
                    reason = verdict[1] if isinstance(verdict, tuple) else f.name
                    self.dropped[source][reason] += 1
                    rejects.append({**row, "drop_reason": reason})
                    break
            else:
                self.kept[source] += 1
                kept.append(row)
        return kept, rejects

    def to_dict(self) -> dict[str, Any]:
        sources = sorted(self.total)
        per_source = {
            s: {"total": self.total[s], "kept": self.kept[s], "dropped": dict(sorted(self.dropped[s].items()))}
            for s in sources
        }
        reasons: dict[str, int] = defaultdict(int)
        for s in sources:
            for r, n in self.dropped[s].items():
                reasons[r] += n
        return {
            "total": sum(self.total.values()),
            "kept": sum(self.kept.values()),
            "dropped": dict(sorted(reasons.items())),
            "per_source": per_source,
        }

    def to_markdown(self) -> str:
        d = self.to_dict()
        reasons = list(d["dropped"])
        head = "| source | total | " + " | ".join(reasons) + (" | " if reasons else "") + "kept |"
        lines = ["# Curation funnel", "", head, "|" + "---|" * (3 + len(reasons))]
        rows = [(s, v["total"], v["dropped"], v["kept"]) for s, v in d["per_source"].items()]
        rows.append(("**all**", d["total"], d["dropped"], d["kept"]))
        for s, total, dropped, kept in rows:
            cells = [str(dropped.get(r, 0)) for r in reasons]
            lines.append(f"| {s} | {total} | " + " | ".join(cells) + (" | " if cells else "") + f"{kept} |")
        return "\n".join(lines) + "\n"
