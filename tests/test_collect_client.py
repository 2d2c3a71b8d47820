"""collect online: faults, retries, Retry-After, rate limits, the cache across re-runs, cost, dry run, the key.

Every test runs the collect stage as gpt4all-collect does (composed config + overrides) against the
fault-injecting OpenAI-compatible server (real HTTP on 127.0.0.1, real openai client).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from collect_util import run_collect

from gpt4all.collect.testing_server import FakeOpenAI, Faults

RETRY_TYPES = {"RateLimitError", "InternalServerError", "APITimeoutError", "JSONDecodeError", "EmptyAnswer"}


@pytest.fixture
def fake():
    with FakeOpenAI(faults=Faults.uniform(0.2, retry_after_s=0.01, slow_s=1.0), seed=1) as srv:
        yield srv


def assert_one_record_per_prompt(run: dict, n: int) -> None:
    ids = [r["id"] for r in run["records"]]
    assert len(ids) == n and len(set(ids)) == n
    res = run["result"]
    assert res["answered"] + res["failed"] == res["prompts"] == n
    for r in run["records"]:
        assert (r["response"] is None) == (r["error"] is not None)
        if r["error"]:
            assert r["error"]["type"] and r["error"]["attempts"] >= 1 and r["error"]["message"]


def test_twenty_percent_faults_every_prompt_ends_answered_or_failed_and_none_twice(fake, tmp_path: Path):
    run = run_collect(tmp_path, fake.base_url, "data.sources.sample.sample_size=80", "teacher.concurrency=8",
                      "teacher.timeout_s=0.5", "teacher.max_retries=4")
    assert_one_record_per_prompt(run, 80)
    outcomes = Counter(r["outcome"].split(":")[0] for r in fake.log)
    assert outcomes["fault"] >= 8  # faults really were injected (20 % of about 100 attempts)
    answered = Counter(fake.answered())
    assert max(answered.values()) == 1  # no prompt answered twice by the server
    assert run["result"]["answered"] == len(answered) >= 79
    assert run["result"]["retried_errors"] >= outcomes["fault"] - 1
    # an answer after retries counts every attempt (the first runs outside tenacity, the rest in it); the server
    # logs those that reached it (a request on a connection the server closed fails before that)
    tries = Counter(r["prompt"] for r in fake.log)
    answered_records = [r for r in run["records"] if r["response"] is not None]
    assert all(r["attempts"] >= tries[r["prompt"]] for r in answered_records)
    assert sum(r["attempts"] == tries[r["prompt"]] > 1 for r in answered_records) >= 5


def test_failed_prompts_carry_type_status_attempts_and_only_they_are_resent(tmp_path: Path):
    with FakeOpenAI(faults=Faults.uniform(0.5, retry_after_s=0.01, slow_s=1.0), seed=3) as srv:
        first = run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=40", "teacher.max_retries=0",
                            "teacher.timeout_s=0.5", name="first")
    assert_one_record_per_prompt(first, 40)
    failed = {r["prompt"] for r in first["records"] if r["error"]}
    assert 5 <= len(failed) <= 35
    for r in first["records"]:
        if r["error"]:
            assert r["error"]["type"] in RETRY_TYPES and r["error"]["attempts"] == 1
            if r["error"]["type"] == "RateLimitError":
                assert r["error"]["status"] == 429
    assert set(first["result"]["failed_by_reason"]) <= RETRY_TYPES

    with FakeOpenAI() as srv:  # a healthy endpoint: the re-run sends the failed prompts, and nothing else
        second = run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=40", name="second")
        assert set(srv.answered()) == failed and len(srv.log) == len(failed)
    assert second["result"]["answered"] == 40 and second["result"]["cached"] == 40 - len(failed)


def test_rerun_in_a_new_run_dir_sends_nothing(tmp_path: Path):
    with FakeOpenAI() as srv:
        first = run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=20", name="a")
        second = run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=25", name="b")
        assert len(srv.log) == 25 and len(set(srv.answered())) == 25
    assert second["result"]["cached"] == 20 and second["result"]["sent"] == 5
    by_id = {r["id"]: r["response"] for r in first["records"]}
    assert all(r["response"] == by_id[r["id"]] for r in second["records"] if r["id"] in by_id)
    # a change of generation parameters is a different request: it is sent again
    with FakeOpenAI() as srv:
        run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=20", "teacher.temperature=0.1", name="c")
        assert len(srv.log) == 20


def test_retry_after_is_honoured(tmp_path: Path):
    with FakeOpenAI(faults=Faults(rate_429=1.0, retry_after_s=0.4)) as srv:
        start = time.perf_counter()
        run = run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=1", "teacher.max_retries=2",
                          "teacher.backoff_initial_s=0.001", "teacher.backoff_max_s=0.001")
        elapsed = time.perf_counter() - start
        waits = [b["t"] - a["t"] for a, b in zip(srv.log, srv.log[1:])]
    (rec,) = run["records"]
    assert rec["error"]["type"] == "RateLimitError" and rec["error"]["status"] == 429 and rec["error"]["attempts"] == 3
    assert len(waits) == 2 and min(waits) >= 0.38 and elapsed >= 0.8


def test_request_rate_limit(tmp_path: Path):
    with FakeOpenAI() as srv:
        run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=40", "teacher.concurrency=16",
                    "teacher.requests_per_minute=1200")  # 20 a second
        times = sorted(r["t"] for r in srv.log)
    assert times[-1] - times[0] >= 0.9  # 40 requests at 20/s (after a one-second burst of 20)


def test_cost_ledger_dry_run_and_budget(tmp_path: Path):
    model = ["teacher.model=gpt-3.5-turbo", "data.sources.sample.sample_size=30"]
    with FakeOpenAI() as srv:
        dry = run_collect(tmp_path, srv.base_url, *model, "collect.dry_run=true", "teacher.max_tokens=100",
                          name="dry")
        assert srv.log == []  # a dry run sends nothing, and leaves no manifest for curate to take as a finished run
        assert dry["manifest"] is None and (dry["dir"] / "estimate.json").is_file()
        est = dry["result"]
        assert est["dry_run"] and est["to_send"] == 30 and est["est_completion_tokens"] == 3000
        expected = (est["est_prompt_tokens"] * 0.0005 + 3000 * 0.0015) / 1000
        assert est["est_cost_usd"] == pytest.approx(expected, abs=1e-4) and est["est_cost_usd_batch"] == pytest.approx(expected / 2, abs=1e-4)

        run = run_collect(tmp_path, srv.base_url, *model, name="paid")
        res = run["result"]
        usage = [r["usage"] for r in run["records"]]
        spent = sum(u["prompt_tokens"] * 0.0005 + u["completion_tokens"] * 0.0015 for u in usage) / 1000
        assert res["cost_usd"] == pytest.approx(spent, rel=1e-3) and res["dataset_cost_usd"] == pytest.approx(spent, rel=1e-3)
        assert run["manifest"]["counts"]["cost_usd"] == res["cost_usd"]
        assert (run["dir"] / "ledger.json").is_file()

        # a re-run costs nothing, but its dataset still cost what it cost; a dry run now estimates only new prompts
        again = run_collect(tmp_path, srv.base_url, *model, name="again")
        assert again["result"]["cost_usd"] == 0 and again["result"]["dataset_cost_usd"] == pytest.approx(spent, rel=1e-3)
        dry2 = run_collect(tmp_path, srv.base_url, "teacher.model=gpt-3.5-turbo", "data.sources.sample.sample_size=40",
                           "collect.dry_run=true", name="dry2")
        assert dry2["result"]["to_send"] == 10

        capped = run_collect(tmp_path, srv.base_url, "teacher.model=gpt-3.5-turbo", "data.sources.sample.sample_size=60",
                             "collect.max_cost_usd=0.0001", "teacher.concurrency=1", name="capped")
    res = capped["result"]
    assert res["failed_by_reason"].get("BudgetExceeded", 0) > 0
    assert res["answered"] + res["failed"] == 60 and res["cost_usd"] < 0.0001 + 0.0001


def test_api_key_comes_from_the_environment_and_is_written_nowhere(tmp_path: Path, monkeypatch):
    key = "sk-collect-test-SECRET-0123456789"
    monkeypatch.setenv("MY_TEACHER_KEY", key)
    with FakeOpenAI(faults=Faults(rate_500=0.3)) as srv:
        run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=10", "teacher.api_key_env=MY_TEACHER_KEY",
                    "logger=csv")
        run_collect(tmp_path, srv.base_url, "data.sources.sample.sample_size=12", "teacher.api_key_env=MY_TEACHER_KEY",
                    "collect.mode=batch", "teacher.model=batch-model", name="batch")
        assert srv.auth_headers == {f"Bearer {key}"}  # it was really sent
    offenders = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert offenders == []


def test_prepared_requests_match_what_the_sdk_builds():
    """PreparedAsyncOpenAI's reused URL and headers give the request the SDK itself would build."""
    import json

    import openai
    from openai._models import FinalRequestOptions

    from gpt4all.collect.client import PreparedAsyncOpenAI

    kw = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test", "max_retries": 0}
    prepared, plain = PreparedAsyncOpenAI(**kw), openai.AsyncOpenAI(**kw)
    for prompt in ("first", "a longer second prompt"):
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
        opts = {"method": "post", "url": "/chat/completions", "content": body}
        got = prepared._build_request(FinalRequestOptions.construct(**opts))
        want = plain._build_request(FinalRequestOptions.construct(**opts))
        assert (got.method, str(got.url), got.read()) == (want.method, str(want.url), want.read())
        assert dict(got.headers) == dict(want.headers)  # Content-Length follows the body, the key is there
    assert list(prepared._prepared) == [("post", "/chat/completions")]
    # anything per-call is built by the SDK as usual
    opts = {"method": "post", "url": "/chat/completions", "content": b"{}", "headers": {"X-Trace": "1"}}
    assert prepared._build_request(FinalRequestOptions.construct(**opts)).headers["x-trace"] == "1"


def test_an_idempotency_key_is_drawn_only_when_a_header_sends_it():
    from gpt4all.collect.client import PreparedAsyncOpenAI

    client = PreparedAsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)
    assert client._idempotency_header is None and client._idempotency_key() == ""  # OpenAI's client sends none
    client._idempotency_header = "Idempotency-Key"
    keys = {client._idempotency_key() for _ in range(3)}
    assert len(keys) == 3 and all(keys)  # a fresh key per request, as the SDK draws it
