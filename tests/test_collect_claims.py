"""One payer per request: concurrent collectors on one answer cache, a killed collector's claims, old caches."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from collect_util import cli_env, collect_cmd, read_run, run_cli
from test_collect_resume import answered_in_cache, kill_9_when, wait_for

from gpt4all.collect.cache import DB_NAME, SCHEMA_VERSION, AnswerCache
from gpt4all.collect.client import CacheWriter
from gpt4all.collect.testing_server import FakeOpenAI


def finished_runs(out: Path) -> list[dict]:
    return [read_run(p) for p in sorted((out / "collect").iterdir()) if (p / "manifest.json").exists()]


def claims_left(out: Path) -> int:
    with sqlite3.connect(out / ".collect_cache" / DB_NAME) as db:
        return db.execute("SELECT COUNT(*) FROM claims").fetchone()[0]


def test_two_concurrent_collectors_pay_each_prompt_once(tmp_path: Path):
    n, conc = 30, 4
    args = (f"data.sources.sample.sample_size={n}", f"teacher.concurrency={conc}")
    with FakeOpenAI(latency_s=0.02, hold_after=0) as srv:
        procs = [subprocess.Popen(collect_cmd(tmp_path, srv.base_url, *args), env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        try:
            # both collectors have claimed and sent `conc` requests each before any answer comes back
            wait_for(lambda: srv.waiting == 2 * conc, 120, "both collectors to send their first requests")
            srv.hold_after = None
            srv.release()
            logs = [p.communicate(timeout=120)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        answered = Counter(srv.answered())
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-2000:] for x in logs)
    assert len(answered) == n and max(answered.values()) == 1  # every prompt answered, each paid once
    runs = finished_runs(tmp_path)
    assert len(runs) == 2
    for run in runs:  # both runs end with every prompt answered
        assert len(run["records"]) == n and all(r["response"] for r in run["records"])
    sent = [run["manifest"]["counts"]["sent"] for run in runs]
    assert min(sent) >= conc and sum(sent) == n  # both sent, neither sent what the other paid for
    others = [run["manifest"]["counts"]["answered_by_other_collector"] for run in runs]
    assert [s + o for s, o in zip(sent, others)] == [n, n]  # what one did not send, the other answered
    assert claims_left(tmp_path) == 0


def test_killed_collectors_claims_are_taken_over_after_their_lease(tmp_path: Path):
    n, first_batch, conc = 24, 10, 4
    args = (f"data.sources.sample.sample_size={n}", f"teacher.concurrency={conc}", "collect.claim_lease_s=3")
    with FakeOpenAI(latency_s=0.01, hold_after=first_batch) as srv:
        proc = subprocess.Popen(collect_cmd(tmp_path, srv.base_url, *args), env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_9_when(proc, lambda: srv.waiting == conc and answered_in_cache(tmp_path) == srv._answered >= first_batch,
                    "answers committed and requests in flight", settle_s=0.2)
        killed_answers = srv._answered
        # the killed collector's claims are still in the cache: each worker's request in flight and its next one
        # (claimed while the first was in flight)
        assert claims_left(tmp_path) == 2 * conc
        srv.hold_after = None
        srv.release()
        second = run_cli(tmp_path, srv.base_url, *args)
        answered = Counter(srv.answered())
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(answered) == n and max(answered.values()) == 1  # no answer lost, none paid twice
    assert f"took over {2 * conc} requests claimed by" in second.stderr + second.stdout
    (run,) = finished_runs(tmp_path)
    assert len(run["records"]) == n and all(r["response"] for r in run["records"])
    assert run["manifest"]["counts"]["cached"] == killed_answers
    assert claims_left(tmp_path) == 0


def test_claims_hold_until_settled_or_expired(tmp_path: Path):
    with AnswerCache(tmp_path) as a, AnswerCache(tmp_path) as b:
        start = time.time()
        assert a.claim("k", "A", 0.3, start) == ("mine", None)
        assert b.claim("k", "B", 0.3, start) == ("held", "A")
        assert a.renew_claims("A", 0.3) == 1
        time.sleep(0.35)  # A stopped renewing: its claim expires
        assert b.claim("k", "B", 0.3, start) == ("mine", "A")
        assert a.claim("k", "A", 0.3, start) == ("held", "B")
        b.put("k", {"response": "x"}, answered=True, attempts=1)
        assert a.claim("k", "A", 0.3, start) == ("settled", None) and b.claims() == []
        assert a.claim("f", "A", 0.3, start)[0] == "mine"
        a.put("f", {"error": {"type": "X"}}, answered=False, attempts=1)  # failed during B's run: settled for B
        assert b.claim("f", "B", 0.3, start) == ("settled", None)
        assert b.claim("f", "B", 0.3, time.time() + 1)[0] == "mine"  # failed before a run started: retried


OLD_SCHEMA = """
CREATE TABLE answers (key TEXT PRIMARY KEY, status TEXT NOT NULL, record TEXT NOT NULL, attempts INTEGER NOT NULL,
                      updated REAL);
CREATE TABLE batches (name TEXT PRIMARY KEY, input_file_id TEXT, batch_id TEXT, state TEXT NOT NULL, created REAL);
CREATE TABLE batch_items (key TEXT PRIMARY KEY, batch TEXT NOT NULL);
"""


def test_cache_from_an_older_version_is_upgraded_and_keeps_its_answers(tmp_path: Path, caplog):
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO answers VALUES ('k', 'answered', ?, 1, 0)", (json.dumps({"response": "old"}),))
    with caplog.at_level(logging.WARNING), AnswerCache(tmp_path) as cache:
        assert cache.get_many(["k"])["k"][1] == {"response": "old"}
        assert cache.claim("j", "A", 5, 0)[0] == "mine"
        assert cache.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert str(tmp_path / DB_NAME) in caplog.text and "older gpt4all-lab" in caplog.text


def test_cache_from_a_newer_version_or_not_a_database_is_refused(tmp_path: Path):
    (tmp_path / "new").mkdir()
    with sqlite3.connect(tmp_path / "new" / DB_NAME) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match=f"{tmp_path / 'new' / DB_NAME}.*newer"):
        AnswerCache(tmp_path / "new")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(RuntimeError, match=f"{tmp_path / 'junk' / DB_NAME}.*not a readable SQLite"):
        AnswerCache(tmp_path / "junk")


def test_one_group_commit_settles_answers_and_decides_claims(tmp_path: Path):
    with AnswerCache(tmp_path) as a, AnswerCache(tmp_path) as b:
        assert b.claim("held", "B", 30, 0) == ("mine", None)
        assert a.claim("k1", "A", 30, 0) == ("mine", None)
        out = a.settle_and_claim_many([
            (("k1", {"response": "x"}, True, 1), ("k2", "A", 30, 0)),  # commit k1, claim k2
            (None, ("held", "A", 30, 0)),  # B holds it
            (None, ("k1", "A", 30, 0)),  # answered just now, in this call
            (("k3", {"error": {"type": "X"}}, False, 2), None)])
        assert out == [("mine", None), ("held", "B"), ("settled", None), None]
        assert sorted(k for k, _, _ in b.claims()) == ["held", "k2"]  # k1's claim went with its answer
        assert (a.count("answered"), a.count("failed")) == (1, 1)
        assert b.get_many(["k3"])["k3"][2] == 2


def test_a_failed_cache_write_is_raised_and_not_lost_silently(tmp_path: Path):
    async def run() -> None:
        cache = AnswerCache(tmp_path)
        writer = CacheWriter(cache, "A", lease_s=30)
        cache.db.close()  # every write fails from now on
        with pytest.raises(sqlite3.ProgrammingError):
            await writer.submit(("k", {"response": "x"}, True, 1), None)
        with pytest.raises(sqlite3.ProgrammingError):  # and so does everything after it, awaited or not
            writer.submit(None, ("j", "A", 30, 0))
        with pytest.raises(sqlite3.ProgrammingError):
            writer.close()

    asyncio.run(run())
