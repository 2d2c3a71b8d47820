"""collect durability: kill -9 mid-run and resume (online and batch), and batch mode end to end with expiry."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from collect_util import cli_env, collect_cmd, read_run, run_cli, run_collect

from gpt4all.collect.testing_server import BatchPlan, FakeOpenAI


def answered_in_cache(out: Path) -> int:
    path = out / ".collect_cache" / "cache.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers WHERE status = 'answered'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def wait_for(cond, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_9_when(proc: subprocess.Popen, cond, what: str, settle_s: float) -> None:
    """SIGKILL the collector once `cond` holds (and `settle_s` has passed); never leave it running."""
    try:
        wait_for(cond, what=what)
        time.sleep(settle_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in (out / "collect").iterdir() if (p / "manifest.json").exists()]
    return run_dir


def test_kill_9_mid_run_then_the_same_command_resumes_without_paying_twice(tmp_path: Path):
    n, first_batch, conc = 40, 15, 4
    args = (f"data.sources.sample.sample_size={n}", f"teacher.concurrency={conc}")
    with FakeOpenAI(latency_s=0.01, hold_after=first_batch) as srv:
        proc = subprocess.Popen(collect_cmd(tmp_path, srv.base_url, *args), env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill once 15 answers are committed and `conc` requests are in flight (held by the server)
        kill_9_when(proc, lambda: srv.waiting == conc and answered_in_cache(tmp_path) == srv._answered >= first_batch,
                    "answers committed and requests in flight", settle_s=0.2)
        killed_answers = srv._answered
        srv.hold_after = None
        srv.release()
        wait_for(lambda: srv.waiting == 0, 10, "held requests to finish")
        time.sleep(0.1)
        assert not any((tmp_path / "collect").glob("*/manifest.json"))  # the first run never finished
        assert [r["outcome"] for r in srv.log].count("dropped") == conc  # in flight at the kill: never delivered

        proc2 = run_cli(tmp_path, srv.base_url, *args)  # the same command again
        assert proc2.returncode == 0, proc2.stderr[-3000:]
        answered = Counter(srv.answered())
    assert max(answered.values()) == 1 and len(answered) == n  # no prompt answered twice, every prompt answered
    run = read_run(only_run(tmp_path))
    assert sorted(r["id"] for r in run["records"]) == sorted({r["id"] for r in run["records"]})
    assert len(run["records"]) == n and all(r["response"] for r in run["records"])
    counts = run["manifest"]["counts"]
    assert counts["cached"] == killed_answers and counts["sent"] == n - killed_answers


def test_batch_mode_end_to_end_with_an_expired_batch(tmp_path: Path):
    plan = BatchPlan(polls_to_finish=2, expire_first_n_lines=5, expire_batches=1)
    with FakeOpenAI(batch=plan) as srv:
        run = run_collect(tmp_path, srv.base_url, "collect.mode=batch", "teacher.model=gpt-3.5-turbo",
                          "data.sources.sample.sample_size=12", "collect.batch.max_requests_per_file=100")
        uploads = [srv.files[f]["data"].decode().splitlines() for f in srv.uploads]
        answered = Counter(srv.answered())
    assert len(uploads) == 2 and len(uploads[0]) == 12
    first_ids = [json.loads(x)["custom_id"] for x in uploads[0]]
    resent = {json.loads(x)["custom_id"] for x in uploads[1]}
    assert resent == set(first_ids[5:])  # only the lines the expired batch never ran, and all of them
    assert len(answered) == 12 and max(answered.values()) == 1
    res = run["result"]
    assert res["answered"] == 12 and res["failed"] == 0 and res["batch_rounds"] == 2
    usage = [r["usage"] for r in run["records"]]
    batch_price = sum(u["prompt_tokens"] * 0.0005 + u["completion_tokens"] * 0.0015 for u in usage) / 1000 * 0.5
    assert res["cost_usd"] == pytest.approx(batch_price, rel=1e-3)  # priced at the batch rate
    assert {r["mode"] for r in run["records"]} == {"batch"}


def test_batch_files_respect_the_size_limits(tmp_path: Path):
    with FakeOpenAI(batch=BatchPlan(polls_to_finish=1)) as srv:
        run_collect(tmp_path, srv.base_url, "collect.mode=batch", "data.sources.sample.sample_size=30",
                    "collect.batch.max_requests_per_file=8", "collect.batch.max_file_bytes=2000")
        sizes = [(len(srv.files[f]["data"]), srv.files[f]["data"].count(b"\n")) for f in srv.uploads]
    assert sum(n for _, n in sizes) == 30 and all(b <= 2000 and n <= 8 for b, n in sizes)


def test_batch_expired_lines_fail_with_a_reason_when_rounds_run_out(tmp_path: Path):
    plan = BatchPlan(polls_to_finish=1, expire_first_n_lines=3, expire_batches=5)
    with FakeOpenAI(batch=plan) as srv:
        run = run_collect(tmp_path, srv.base_url, "collect.mode=batch", "data.sources.sample.sample_size=10",
                          "collect.batch.max_rounds=2")
    res = run["result"]
    assert res["answered"] == 6 and res["failed"] == 4 and res["failed_by_reason"] == {"batch_expired": 4}
    assert all(r["error"]["attempts"] == 2 for r in run["records"] if r["error"])


def test_batch_run_killed_while_polling_resumes_by_its_saved_batch_ids(tmp_path: Path):
    args = ("collect.mode=batch", "data.sources.sample.sample_size=20", "collect.batch.max_requests_per_file=8")
    with FakeOpenAI(batch=BatchPlan(polls_to_finish=2, hold=True)) as srv:
        proc = subprocess.Popen(collect_cmd(tmp_path, srv.base_url, *args), env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_9_when(proc, lambda: len(srv.batches) == 3, "three batches created", settle_s=0.3)
        srv.release_batches()
        proc2 = run_cli(tmp_path, srv.base_url, *args)
        assert proc2.returncode == 0, proc2.stderr[-3000:]
        assert len(srv.uploads) == 3 and len(srv.batches) == 3  # nothing uploaded or created again
        answered = Counter(srv.answered())
    assert len(answered) == 20 and max(answered.values()) == 1
    run = read_run(only_run(tmp_path))
    assert len(run["records"]) == 20 and all(r["response"] for r in run["records"])
