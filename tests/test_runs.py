"""Sweeps, the stage cache, config diffs, the runs table and the report, on real pipeline runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all.runs.diff import diff_runs, sweep_configs, varying_keys, _ignored
from gpt4all.runs.report import build_report

ENV = {**os.environ, "WANDB_MODE": "offline"}
SHORT = "pipeline.stages=[collect,curate]"


def pipeline(out: Path, *overrides: str, multirun: bool = False, sweep: str = "sweep") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gpt4all.pipeline", "experiment=debug", f"paths.output_dir={out}", *overrides]
    if multirun:
        cmd[3:3] = ["-m"]
        cmd.append(f"hydra.sweep.dir={out}/{sweep}")
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, timeout=600)


def summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_out")
    proc = pipeline(out, "lora.r=4,8", multirun=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


def test_sweep_jobs_share_collect_and_curate_through_the_cache(sweep):
    job0, job1 = summaries(sweep / "sweep")
    assert not job0["stages"]["collect"]["reused"] and job1["stages"]["collect"]["reused"]
    assert job1["stages"]["curate"]["dir"] == job0["stages"]["curate"]["dir"]
    assert not job1["stages"]["train"]["reused"]  # lora.r differs: train re-runs


def test_sweep_wandb_runs_share_a_group(sweep):
    groups = set()
    for run in (sweep / "sweep").glob("*/train/wandb/offline-run-*"):
        records = subprocess.run([str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(run)],
                                 capture_output=True, text=True, check=True).stdout
        groups.add(next(json.loads(line)["run"]["run_group"] for line in records.splitlines() if '"type":"run"' in line))
    assert groups == {"sweep-sweep"}


def test_diff_shows_exactly_the_swept_key(sweep):
    grouped, ov0, ov1 = diff_runs(sweep / "sweep" / "0", sweep / "sweep" / "1")
    assert {key for rows in grouped.values() for key, _, _ in rows} == {"lora.r"}
    assert grouped["lora"] == [("lora.r", 4, 8)]
    assert "lora.r=4" in ov0 and "lora.r=8" in ov1
    varying = {k for k in varying_keys(sweep_configs(sweep / "sweep")) if not _ignored(k)}
    assert varying == {"lora.r"}
    md = subprocess.run([str(Path(sys.executable).with_name("gpt4all-diff")), str(sweep / "sweep" / "0"),
                         str(sweep / "sweep" / "1"), "--markdown"], capture_output=True, text=True, check=True).stdout
    assert "| lora | `lora.r` | `4` | `8` |" in md


def test_relaunched_sweep_skips_finished_jobs(sweep):
    proc = pipeline(sweep, "lora.r=4,8", multirun=True, sweep="sweep_again")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for summary in summaries(sweep / "sweep_again"):
        assert all(stage["reused"] for stage in summary["stages"].values())
    assert "every stage was cached" in proc.stdout
    assert not list((sweep / "sweep_again").glob("*/train"))  # nothing trained again


def test_cache_hit_on_irrelevant_override_miss_on_relevant(tmp_path):
    first = pipeline(tmp_path, SHORT)
    assert first.returncode == 0, first.stdout[-3000:]
    same = pipeline(tmp_path, SHORT, "logger.wandb.tags=[rerun]", "eval.limit=3")
    changed = pipeline(tmp_path, SHORT, "teacher.temperature=0.3")
    forced = pipeline(tmp_path, SHORT, "stage_cache.force=[collect]")
    assert same.returncode == changed.returncode == forced.returncode == 0
    runs = summaries(tmp_path / "pipeline")
    assert [r["stages"]["collect"]["reused"] for r in runs] == [False, True, False, False]
    assert "[collect] cached: reusing" in same.stdout


def test_runs_table_lists_the_sweep(sweep, tmp_path):
    out_csv = tmp_path / "runs.csv"
    proc = subprocess.run([str(Path(sys.executable).with_name("gpt4all-runs")), str(sweep / "sweep"), "--csv", str(out_csv)],
                          capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 and {r["kind"] for r in rows} == {"pipeline"}
    assert sorted(r["overrides"].split()[-1] for r in rows) == ["lora.r=4", "lora.r=8"]
    assert all(float(r["curate.kept"]) > 0 and r["ppl.finetuned"] for r in rows)
    assert "2 runs" in proc.stdout


def test_report_renders_every_section(sweep):
    html, md = build_report(sweep / "sweep" / "0")
    text = md.read_text()
    for title in ("## Run", "## Curation funnel", "## Training", "## Perplexity", "## Quantization", "## Cost"):
        assert title in text
    assert "KL divergence to the unquantized model" in text and "mean_kld" in text
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<table>" in page
    html, md = build_report(sweep / "sweep")
    text = md.read_text()
    assert "## Sweep" in text and "## Config diff across the sweep" in text and "`lora.r`" in text
    assert "job 1: Perplexity" in text


def test_sweep_failure_is_reported_and_fail_fast_stops_it(tmp_path):
    keep_going = pipeline(tmp_path, SHORT, "lora.r=abc,8", multirun=True, sweep="a")
    assert keep_going.returncode != 0
    assert (tmp_path / "a" / "0" / "FAILED").exists() and (tmp_path / "a" / "1" / "summary.json").exists()
    assert keep_going.stdout.index("FAILED") < keep_going.stdout.index("#1 :")  # reported before job 1 starts
    fail_fast = pipeline(tmp_path, SHORT, "pipeline.fail_fast=true", "lora.r=abc,8",
                         multirun=True, sweep="b")
    assert fail_fast.returncode != 0
    assert (tmp_path / "b" / "0" / "FAILED").exists() and not (tmp_path / "b" / "1").exists()
