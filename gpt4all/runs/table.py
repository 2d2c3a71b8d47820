"""`gpt4all-runs`: a table of runs under outputs/ and multirun/ with their overrides and headline metrics."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpt4all.runs.discover import Run, find_runs, headline, load_overrides


def rows(runs: list[Run], root: Path | None = None) -> list[dict[str, str]]:
    out = []
    for run in runs:
        path = run.path.relative_to(root) if root and run.path.is_relative_to(root) else run.path
        row = {
            "run": str(path),
            "kind": run.kind,
            "status": "failed" if run.failed else "ok",
            "finished": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.time)),
            "overrides": " ".join(o for o in load_overrides(run.path) if not o.startswith("paths.")),
        }
        row.update({k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in headline(run).items()})
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpt4all-runs", description=__doc__)
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("outputs"), Path("multirun")])
    parser.add_argument("--csv", type=Path, help="also write the table as CSV")
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args(argv)
    table_rows = rows(find_runs(args.roots)[: args.limit], Path.cwd())
    columns = list(dict.fromkeys(k for r in table_rows for k in r))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table_rows)
    table = Table(title=f"{len(table_rows)} runs under {', '.join(map(str, args.roots))}")
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in table_rows:
        table.add_row(*(r.get(c, "") for c in columns))
    Console(width=max(160, Console().width)).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
