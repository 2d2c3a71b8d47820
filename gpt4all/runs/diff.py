"""`gpt4all-diff RUN_A RUN_B`: config differences of two runs and, per stage, which part of its cache key changed
(config, seed, an input's content, the code); `gpt4all-diff SWEEP_DIR`: keys that vary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpt4all.core.cache import changes, flatten
from gpt4all.core.manifest import MANIFEST
from gpt4all.runs.discover import load_config, load_overrides, sweep_jobs

MISSING = "<absent>"


def diff_configs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[tuple[str, Any, Any]]]:
    """Changed, added and removed keys, grouped by their config group (the first key part)."""
    fa, fb = flatten(a), flatten(b)
    grouped: dict[str, list[tuple[str, Any, Any]]] = {}
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, MISSING), fb.get(key, MISSING)
        if va != vb:
            grouped.setdefault(key.split(".")[0], []).append((key, va, vb))
    return grouped


def varying_keys(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """key -> {run name: value} for every key whose value is not the same in all runs."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values()))) if flat else []
    out = {}
    for key in keys:
        values = {name: f.get(key, MISSING) for name, f in flat.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[key] = values
    return out


def _ignored(key: str) -> bool:
    """Paths that differ between any two runs by construction (their own dirs)."""
    return key.endswith(("input_dir", "data_dir", "model_dir", "train_dir", "quantize_dir")) or key.startswith("paths.")


def diff_runs(a: Path, b: Path, all_keys: bool = False) -> tuple[dict[str, list], list[str], list[str]]:
    grouped = diff_configs(load_config(a), load_config(b))
    if not all_keys:
        grouped = {g: [row for row in rows if not _ignored(row[0])] for g, rows in grouped.items()}
        grouped = {g: rows for g, rows in grouped.items() if rows}
    return grouped, load_overrides(a), load_overrides(b)


def stage_parts(run: Path) -> dict[str, dict[str, Any]]:
    """stage -> the cache-key parts its manifest recorded, for a stage run dir or each stage of a pipeline run."""
    dirs = [run] if (run / MANIFEST).is_file() else sorted(p.parent for p in run.glob(f"*/{MANIFEST}"))
    out = {}
    for d in dirs:
        manifest = json.loads((d / MANIFEST).read_text())
        if "cache_parts" in manifest:
            out[manifest["stage"]] = manifest["cache_parts"]
    return out


def diff_parts(a: Path, b: Path) -> list[tuple[str, str]]:
    """(stage, what changed in its cache key) for each stage both runs recorded."""
    pa, pb = stage_parts(a), stage_parts(b)
    return [(stage, change) for stage in pa if stage in pb for change in changes(pa[stage], pb[stage])]


def markdown_diff(a: Path, b: Path, grouped: dict[str, list], ov_a: list[str], ov_b: list[str]) -> str:
    lines = [f"### Config diff: `{a}` vs `{b}`", "", f"- overrides A: `{' '.join(ov_a) or '(none)'}`",
             f"- overrides B: `{' '.join(ov_b) or '(none)'}`", ""]
    if not grouped:
        lines.append("No differences in the resolved configs.")
    else:
        lines += ["| group | key | A | B |", "|---|---|---|---|"]
        for group, rows in grouped.items():
            for key, va, vb in rows:
                lines.append(f"| {group} | `{key}` | `{va}` | `{vb}` |")
    parts = diff_parts(a, b)
    if parts:
        lines += ["", "What each stage read (its cache key) changed:", "", "| stage | change |", "|---|---|"]
        lines += [f"| {stage} | {change} |" for stage, change in parts]
    return "\n".join(lines) + "\n"


def markdown_varying(sweep: Path, varying: dict[str, dict[str, Any]]) -> str:
    names = sorted({n for v in varying.values() for n in v}, key=lambda n: int(n) if n.isdigit() else n)
    lines = [f"### Keys that vary across `{sweep}`", "", "| key | " + " | ".join(f"job {n}" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for key, values in varying.items():
        lines.append(f"| `{key}` | " + " | ".join(f"`{values.get(n, MISSING)}`" for n in names) + " |")
    return "\n".join(lines) + "\n"


def print_diff(console: Console, a: Path, b: Path, grouped: dict[str, list], ov_a: list[str], ov_b: list[str]) -> None:
    console.print(f"[bold]A[/] {a}  overrides: {' '.join(ov_a) or '(none)'}")
    console.print(f"[bold]B[/] {b}  overrides: {' '.join(ov_b) or '(none)'}")
    if not grouped:
        console.print("[green]No differences in the resolved configs.[/]")
    else:
        table = Table(show_lines=False)
        for col in ("group", "key", "A", "B"):
            table.add_column(col, overflow="fold")
        for group, rows in grouped.items():
            for i, (key, va, vb) in enumerate(rows):
                table.add_row(group if i == 0 else "", key, f"[red]{va}[/]", f"[green]{vb}[/]")
        console.print(table)
    parts = diff_parts(a, b)
    if parts:
        table = Table(title="What each stage read (its cache key) changed")
        table.add_column("stage")
        table.add_column("change", overflow="fold")
        for stage, change in parts:
            table.add_row(stage, change)
        console.print(table)


def sweep_configs(sweep: Path) -> dict[str, dict[str, Any]]:
    jobs = sweep_jobs(sweep)
    if not jobs:
        raise SystemExit(f"{sweep} has no numbered job dirs: give two run dirs, or a multirun sweep dir")
    return {job.name: load_config(job) for job in jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpt4all-diff", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="two run dirs, or one multirun sweep dir")
    parser.add_argument("--markdown", action="store_true", help="print markdown (for a review comment)")
    parser.add_argument("--all", action="store_true", help="include keys that always differ (paths, input dirs)")
    args = parser.parse_args(argv)
    console = Console()
    if len(args.runs) == 1:
        varying = {k: v for k, v in varying_keys(sweep_configs(args.runs[0])).items() if args.all or not _ignored(k)}
        text = markdown_varying(args.runs[0], varying)
        console.print(text, markup=False, highlight=False) if args.markdown else console.print(text)
        return 0
    if len(args.runs) != 2:
        parser.error("give two run dirs, or one sweep dir")
    a, b = args.runs
    grouped, ov_a, ov_b = diff_runs(a, b, all_keys=args.all)
    if args.markdown:
        sys.stdout.write(markdown_diff(a, b, grouped, ov_a, ov_b))
    else:
        print_diff(console, a, b, grouped, ov_a, ov_b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
