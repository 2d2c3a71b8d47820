"""collect: prompt sources in each source's real format, and the stage against a real llama.cpp server process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from collect_util import run_collect

from gpt4all.collect.server import LlamaCppServer, free_port
from gpt4all.collect.sources import HubSource, JsonlSource, Source, mix, oig_human_turn
from gpt4all.core.jsonl import JsonlError


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


def test_oig_chip2_local_file_in_its_real_format(tmp_path: Path):
    lines = [
        {"text": "<human>: What is the best way to learn  Spanish?\n<bot>: Practice daily.", "metadata": {"source": "unified_chip2"}},
        {"text": "<human>: Tips for sleep?\n<bot>: Keep a schedule.\n<human>: And diet?\n<bot>: Eat early.", "metadata": {}},
        {"text": "no turns in this one", "metadata": {}},
    ]
    path = tmp_path / "unified_chip2.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken\n")
    src = Source("oig_chip2", path=str(path), format="oig", prompt_field="text", on_error="skip")
    assert [p.prompt for p in src.load()] == ["What is the best way to learn Spanish?", "Tips for sleep?"]
    assert sum(src.dropped.values()) == 2  # the line with no human turn and the broken line, counted
    with pytest.raises(JsonlError, match=r"unified_chip2\.jsonl:3: no '<human>:' turn"):
        Source("oig_chip2", path=str(path), format="oig", prompt_field="text").load()


def test_stackoverflow_posts_questions_tsv_gives_title_and_body(shared_data):
    tsv = shared_data / "stackoverflow" / "stackoverflow_posts_questions_top100.tsv"
    rows = Source("stackoverflow", path=str(tsv), format="title_body", title_field="title", prompt_field="body",
                  id_field="id").load()
    ref = {json.loads(x)["id"]: json.loads(x)["prompt"]
           for x in (shared_data / "stackoverflow" / "stackoverflow_questions_top100_prompts.jsonl").open()}
    assert len(rows) == 100
    assert rows[0].prompt.startswith("az acr login raises DOCKER_COMMAND_ERROR") and "\n\n<p>" in rows[0].prompt
    assert {p.id for p in rows} == set(ref)
    assert all(p.prompt.split("\n")[0] == ref[p.id].split("\n")[0] for p in rows)  # the same titles


def test_stackoverflow_tsv_with_a_missing_column_names_file_and_line(tmp_path: Path):
    path = tmp_path / "questions.tsv"
    path.write_text("id\ttitle\n1\tHow to sort?\n")
    with pytest.raises(JsonlError, match=r"questions\.tsv:2: missing field 'body'"):
        Source("so", path=str(path), format="title_body", title_field="title", prompt_field="body").load()


def test_p3_hub_rows_use_inputs_pretokenized(tmp_path: Path):
    path = tmp_path / "p3.jsonl"
    rows = [{"inputs": [1, 2], "inputs_pretokenized": "Passage: Sky is blue.\nQuestion: is the sky blue?",
             "targets_pretokenized": "yes"}, {"inputs": [3], "inputs_pretokenized": "   "}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = Source("p3", path=str(path), prompt_field="inputs_pretokenized", on_error="skip")
    assert [p.prompt for p in src.load()] == ["Passage: Sky is blue.\nQuestion: is the sky blue?"]
    assert dict(src.dropped) == {"empty prompt in field 'inputs_pretokenized'": 1}


def test_mixture_normalises_dedups_and_counts(shared_data, tmp_path: Path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"q": "Hello  there?"}) + "\n" + json.dumps({"q": "hello there?"}) + "\n")
    p3 = JsonlSource(str(shared_data / "p3_t0" / "p3_t0_sample.jsonl"), "p3", sample_size=200, seed=0)
    prompts, dropped = mix([Source("a", path=str(a), prompt_field="q"), p3])
    assert prompts[0].prompt == "Hello there?" and dropped["a"] == 1
    assert dropped.get("p3", 0) > 0  # P3 repeats its templated prompts
    assert len({p.prompt.lower() for p in prompts}) == len(prompts)


def test_bad_format_is_a_clear_error():
    with pytest.raises(ValueError, match="format must be one of"):
        Source("x", path="x.jsonl", format="chat")


def test_hub_rows_become_prompts_in_each_format():
    oig = HubSource("laion/OIG", "oig_chip2", format="oig", prompt_field="text")
    assert oig.to_prompt({"text": "<human>: Tips for  sleep?\n<bot>: Keep a schedule."}).prompt == "Tips for sleep?"
    so = HubSource("so", "stackoverflow", format="title_body", prompt_field="body", title_field="title")
    p = so.to_prompt({"title": "Sort a dict", "body": "<p>How?</p>"})
    assert p.prompt == "Sort a dict\n\n<p>How?</p>" and p.source == "stackoverflow"


def test_collect_against_a_real_llama_cpp_server(tmp_path: Path):
    with LlamaCppServer(model_alias="smollm2", log_path=tmp_path / "server.log") as url:
        run = run_collect(tmp_path, url, "data.sources.sample.sample_size=3", "teacher.model=smollm2",
                          "teacher.max_tokens=16", "teacher.temperature=0", "teacher.concurrency=2")
        # a timeout far below the answer time: every attempt times out; the prompt fails with its reason
        slow = run_collect(tmp_path, url, "data.sources.sample.sample_size=1", "teacher.model=smollm2",
                           "teacher.max_tokens=200", "teacher.timeout_s=0.01", "teacher.max_retries=1", name="slow")
    assert run["result"]["answered"] == 3 and run["result"]["failed"] == 0
    for r in run["records"]:
        assert r["response"] and r["finish_reason"] in ("stop", "length") and r["usage"]["completion_tokens"] > 0
    assert run["result"]["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in run["records"])
    (rec,) = slow["records"]
    assert rec["error"]["type"] == "APITimeoutError" and rec["error"]["attempts"] == 2


def test_dead_endpoint_fails_fast_with_its_url(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match="127.0.0.1"):
        run_collect(tmp_path, url, "data.sources.sample.sample_size=2")


def test_openai_teacher_without_key_names_the_variable(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        run_collect(tmp_path, "null", "teacher=openai", "data.sources.sample.sample_size=2")


def test_source_typo_names_the_key(tmp_path: Path):
    from gpt4all.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"sampel_size"):
        run_collect(tmp_path, "http://127.0.0.1:9/v1", "+data.sources.sample.sampel_size=3")
