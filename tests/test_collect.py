"""collect: prompt sources and the async client against a real llama.cpp server process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gpt4all.collect.client import collect
from gpt4all.collect.server import LlamaCppServer, free_port
from gpt4all.collect.sources import JsonlSource, Prompt, mix, oig_human_turn
from gpt4all.core.jsonl import JsonlError


def teacher(**kw):
    base = {"name": "t", "model": "smollm2", "base_url": None, "api_key_env": None, "system_prompt": None,
            "temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "concurrency": 2, "timeout_s": 60,
            "max_retries": 0, "server": None}
    return OmegaConf.create({**base, **kw})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LlamaCppServer(model_alias="smollm2", log_path=tmp_path_factory.mktemp("srv") / "server.log") as url:
        yield url


def test_bundled_sample_has_three_styles_and_duplicates_are_dropped():
    src = JsonlSource(path=None, name="sample", source_field="source", id_field="id")
    rows = src.load()
    assert len(rows) == 150
    assert {r.source for r in rows} == {"sample_chip2", "sample_stackoverflow", "sample_p3"}
    prompts, dropped = mix([src])
    assert len(prompts) == 147 and sum(dropped.values()) == 3
    assert len({p.prompt for p in prompts}) == len(prompts)


def test_sample_size_is_seeded():
    a = JsonlSource(None, "s", sample_size=10, seed=1, source_field="source").load()
    b = JsonlSource(None, "s", sample_size=10, seed=1, source_field="source").load()
    c = JsonlSource(None, "s", sample_size=10, seed=2, source_field="source").load()
    assert [p.id for p in a] == [p.id for p in b] != [p.id for p in c]


def test_real_p3_prompts_load_with_field_mapping(shared_data):
    src = JsonlSource(str(shared_data / "p3_t0" / "p3_t0_sample.jsonl"), "p3", sample_size=50, seed=0)
    rows = src.load()
    assert len(rows) == 50 and all(r.source == "p3" and r.prompt for r in rows)


@pytest.mark.parametrize(
    "content,match",
    [('{"prompt": "ok"}\n{"prompt": oops}\n', r"bad\.jsonl:2: not valid JSON"),
     ('{"prompt": "ok"}\n\n{"question": "x"}\n', r"bad\.jsonl:3: missing field 'prompt'"),
     ('["a list"]\n', r"bad\.jsonl:1: expected a JSON object")],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(JsonlError, match=match):
        JsonlSource(str(path), "bad").load()


def test_oig_human_turn():
    assert oig_human_turn("<human>: What is 2+2?\n<bot>: 4") == "What is 2+2?"
    assert oig_human_turn("no turns here") is None


def test_collect_writes_one_record_per_prompt(server, tmp_path: Path):
    prompts = [Prompt(f"p{i}", q, "unit") for i, q in enumerate(["What is 2+2?", "Name a colour.", "Say hi."])]
    out = tmp_path / "responses.jsonl"
    stats = asyncio.run(collect(prompts, teacher(), server, out, progress=False))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["answered"] == 3 and stats["failed"] == 0
    assert sorted(r["id"] for r in recs) == ["p0", "p1", "p2"]
    for r in recs:
        assert r["response"] and r["finish_reason"] in ("stop", "length") and r["error"] is None
        assert r["usage"]["completion_tokens"] > 0
    assert stats["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in recs)


def test_failed_requests_are_recorded_with_a_reason(server, tmp_path: Path):
    prompts = [Prompt("slow", "Write a long story about a dragon.", "unit")]
    out = tmp_path / "responses.jsonl"
    stats = asyncio.run(collect(prompts, teacher(timeout_s=0.01, max_tokens=256), server, out, progress=False))
    rec = json.loads(out.read_text())
    assert stats["failed"] == 1 and rec["response"] is None
    assert rec["error"]["type"] in ("APITimeoutError", "APIConnectionError")


def test_dead_endpoint_fails_fast_with_its_url(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match="127.0.0.1"):
        asyncio.run(collect([Prompt("a", "hi", "u")], teacher(base_url=url), url, tmp_path / "r.jsonl", progress=False))


def test_openai_teacher_without_key_names_the_variable(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    t = teacher(name="openai", api_key_env="OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        asyncio.run(collect([Prompt("a", "hi", "u")], t, None, tmp_path / "r.jsonl", progress=False))


def test_hub_rows_become_prompts_in_each_format():
    from gpt4all.collect.sources import HubSource

    oig = HubSource("laion/OIG", "oig_chip2", format="oig", prompt_field="text")
    assert oig.to_prompt({"text": "<human>: Tips for  sleep?\n<bot>: Keep a schedule."}).prompt == "Tips for sleep?"
    so = HubSource("so", "stackoverflow", format="title_body", prompt_field="body", title_field="title")
    p = so.to_prompt({"title": "Sort a dict", "body": "<p>How?</p>"})
    assert p.prompt == "Sort a dict\n\n<p>How?</p>" and p.source == "stackoverflow"
    assert HubSource("x", "p3", prompt_field="inputs").to_prompt({"inputs": ""}) is None
