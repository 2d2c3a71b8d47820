"""`gpt4all-report DIR`: a self-contained HTML (and markdown) report of a pipeline run or a multirun sweep.

Sections: the curation funnel, training curves, the perplexity comparison (plot, table, statistical tests),
the quantization table, the config diff across a sweep, and the cost ledger.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import markdown

from gpt4all.runs.cost import cost_line, cost_report
from gpt4all.runs.diff import _ignored, markdown_varying, sweep_configs, varying_keys
from gpt4all.runs.discover import classify, headline, load_config, load_overrides, sweep_jobs

Section = tuple[str, str]  # (title, markdown body; images referenced by file name inside the report dir)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _copy_image(src: Path, out: Path, name: str) -> str | None:
    if not src.is_file():
        return None
    shutil.copyfile(src, out / name)
    return name


def training_curves(metrics_csv: Path, png: Path) -> Path | None:
    """Train and validation loss per step from the Lightning CSV history."""
    if not metrics_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for key in ("train/loss", "val/loss"):
                if row.get(key) not in (None, ""):
                    series.setdefault(key, []).append((float(row.get("step") or 0), float(row[key])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if key == "val/loss" else None, label=key)
    ax.set(xlabel="step", ylabel="loss", title="training curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def pipeline_sections(run_dir: Path, out: Path, prefix: str = "") -> list[Section]:
    """Report sections of one pipeline run dir (stage dirs may be cached ones elsewhere)."""
    summary = _read_json(run_dir / "summary.json")
    stages = summary.get("stages", {})
    dirs = {s: Path(v["dir"]) for s, v in stages.items() if "dir" in v}
    sections: list[Section] = []

    command = " ".join(["gpt4all-pipeline", *load_overrides(run_dir)])
    sections.append((f"{prefix}Run", f"- dir: `{run_dir}`\n- command: `{command}`\n"
                     f"- config hash: `{summary.get('config_hash', '?')}`\n"
                     + "".join(f"- {s}: `{d}`{' (reused from the stage cache)' if stages[s].get('reused') else ''}\n" for s, d in dirs.items())))

    if "curate" in dirs:
        funnel_md = dirs["curate"] / "funnel.md"
        body = re.sub(r"^(#+) ", r"\1# ", re.sub(r"^# .*\n", "", funnel_md.read_text()), flags=re.M) \
            if funnel_md.is_file() else _table(
            [{"source": s, **v} for s, v in _read_json(dirs["curate"] / "funnel.json").get("per_source", {}).items()])
        sections.append((f"{prefix}Curation funnel", body))

    if "train" in dirs:
        png = training_curves(dirs["train"] / "lightning" / "metrics.csv", out / f"{prefix}training_curves.png".replace(" ", "_"))
        train = stages["train"]
        body = _table([{k: train.get(k) for k in ("steps", "train_examples", "val_examples", "train_loss", "val_loss", "seconds")}])
        if png:
            body += f"\n![training curves]({png.name})\n"
        sections.append((f"{prefix}Training", body))

    if "evaluate" in dirs:
        results = _read_json(dirs["evaluate"] / "results.json")
        models = results.get("models", {})
        rows = [{"model": m, **{k: v for k, v in r.items() if isinstance(v, (int, float, str)) and k not in ("path",)}}
                for m, r in models.items()]
        body = f"Suite `{results.get('suite', '?')}`, {results.get('examples', '?')} examples, clipped at {results.get('clip', '?')}.\n\n"
        body += _table(rows)
        tests = results.get("tests") or results.get("comparisons")
        if tests:
            tests = tests if isinstance(tests, list) else [{"test": k, **v} for k, v in tests.items()]
            effects = [t["summary"] for t in tests if t.get("summary")]
            if effects:  # the effect size and its interval first, the test beside it
                body += "\nEffect sizes (95 % bootstrap CI):\n\n" + "".join(f"- {e}\n" for e in effects)
            body += "\nStatistical tests:\n\n" + _table([{k: v for k, v in t.items() if k != "summary"} for t in tests])
        div = results.get("divergence")
        if div:
            body += "\nKL divergence to the unquantized model (same engine, response tokens):\n\n" + _table(
                [{"model": m, **{k: v for k, v in d.items() if k != "reference" and not isinstance(v, list)}}
                 for m, d in div.items()])
        manifest = _read_json(dirs["evaluate"] / "manifest.json")
        plot = manifest.get("outputs", {}).get("plot", "perplexity.png")
        name = _copy_image(dirs["evaluate"] / plot, out, f"{prefix}perplexity.png".replace(" ", "_"))
        if name:
            body += f"\n![perplexity]({name})\n"
        sections.append((f"{prefix}Perplexity", body))

    if "quantize" in dirs:
        q = stages["quantize"]
        tradeoffs = _read_json(dirs["quantize"] / "tradeoffs.json").get("rows")
        body = _table(tradeoffs) if tradeoffs else _table([{k: v for k, v in q.items() if k not in ("dir",)}])
        sections.append((f"{prefix}Quantization", body))

    cfg = load_config(run_dir) if (run_dir / "config.yaml").is_file() else {}
    cost = cost_report(stages, cfg.get("cost", {}), cfg.get("trainer", {}))
    sections.append((f"{prefix}Cost", f"{cost_line(cost)}\n\n" + _table([cost])))
    return sections


def sweep_sections(sweep: Path, out: Path) -> list[Section]:
    jobs = sweep_jobs(sweep)
    varying = {k: v for k, v in varying_keys(sweep_configs(sweep)).items() if not _ignored(k)}
    rows = []
    for job in jobs:
        run = classify(job)
        row: dict[str, Any] = {"job": job.name, "status": "failed" if run is None or run.failed else "ok"}
        row.update({k: varying[k].get(job.name) for k in varying})
        if run is not None:
            row.update(headline(run))
        rows.append(row)
    sections: list[Section] = [
        ("Sweep", f"- dir: `{sweep}`\n- jobs: {len(jobs)}\n\n" + _table(rows)),
        ("Config diff across the sweep", markdown_varying(sweep, varying).split("\n", 2)[2]),
    ]
    for job in jobs:
        if (job / "summary.json").is_file():
            sections += [(t, b) for t, b in pipeline_sections(job, out, prefix=f"job {job.name}: ") if not t.endswith("Run")]
    return sections


HTML = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:14px}}
th{{background:#f3f3f3}}img{{max-width:100%}}code{{background:#f5f5f5;padding:0 3px}}h2{{border-bottom:1px solid #ddd}}
</style></head><body><h1>{title}</h1>{body}</body></html>"""


def render(sections: list[Section], out: Path, title: str) -> tuple[Path, Path]:
    md = f"# {title}\n\n" + "\n".join(f"## {t}\n\n{b}\n" for t, b in sections)
    md_path = out / "report.md"
    md_path.write_text(md)

    def inline(match: re.Match) -> str:
        img = out / match.group(2)
        data = base64.b64encode(img.read_bytes()).decode() if img.is_file() else ""
        return f'<img alt="{match.group(1)}" src="data:image/png;base64,{data}">'

    body = markdown.markdown("\n".join(f"## {t}\n\n{b}\n" for t, b in sections), extensions=["tables"])
    body = re.sub(r'<img alt="([^"]*)" src="([^"]+)"\s*/?>', inline, body)
    html_path = out / "report.html"
    html_path.write_text(HTML.format(title=title, body=body))
    return html_path, md_path


def build_report(target: Path, out: Path | None = None) -> tuple[Path, Path]:
    """Write report.html and report.md for a pipeline run dir or a sweep dir; returns their paths."""
    target = target.resolve()
    out = out or target / "report"
    out.mkdir(parents=True, exist_ok=True)
    if (target / "summary.json").is_file():
        return render(pipeline_sections(target, out), out, f"gpt4all-lab run {target.name}")
    if sweep_jobs(target):
        return render(sweep_sections(target, out), out, f"gpt4all-lab sweep {target.name}")
    raise SystemExit(f"{target} is neither a pipeline run dir (summary.json) nor a multirun sweep dir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpt4all-report", description=__doc__)
    parser.add_argument("dir", type=Path, help="a pipeline run dir or a multirun sweep dir")
    parser.add_argument("--out", type=Path, help="where to write the report (default DIR/report)")
    args = parser.parse_args(argv)
    html, md = build_report(args.dir, args.out)
    print(f"report: {html}\nmarkdown: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
