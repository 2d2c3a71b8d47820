"""No silent fallbacks: the dry-run token count names its tokenizer or its fallback; the model card says when the
collect manifest behind the data is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from collect_util import run_collect
from test_config import compose_cfg

from gpt4all.collect.cost import token_counter
from gpt4all.collect.testing_server import FakeOpenAI
from gpt4all.core.manifest import write_manifest
from gpt4all.train.card import model_card

TEXTS = ["Hello world", "Write a Python function that reverses a string.", "¿Dónde está la biblioteca? 12345"]


def test_local_teacher_tokens_are_counted_with_its_gguf_tokenizer(tiny_model_cfg, cache_dir):
    from gpt4all.core.models import load_tokenizer

    counter = token_counter(compose_cfg("collect", ["teacher=llamacpp_local"]).teacher)
    assert counter.method.startswith("gguf:") and counter.method.endswith(".gguf") and counter.fallback is None
    hf = load_tokenizer(tiny_model_cfg, cache_dir)  # the same SmolLM2 vocabulary, through HF tokenizers
    assert [counter.count(t) for t in TEXTS] == [len(hf(t, add_special_tokens=False).input_ids) for t in TEXTS]


def test_unknown_model_falls_back_to_chars_and_says_so(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        counter = token_counter(compose_cfg("collect", ["teacher=openai_compatible", "teacher.model=my-model",
                                                        "teacher.base_url=http://127.0.0.1:9/v1"]).teacher)
    assert counter.method == "chars/4" and "tiktoken has no tokenizer for model 'my-model'" in counter.fallback
    assert "counting about 4 characters a token instead" in caplog.text
    openai = token_counter(compose_cfg("collect", ["teacher=openai"]).teacher)  # exact online, named fallback offline
    assert openai.method == "tiktoken:cl100k_base" or (openai.method == "chars/4" and "tiktoken" in openai.fallback)


def test_dry_run_records_how_it_counted(tmp_path: Path):
    with FakeOpenAI() as srv:
        dry = run_collect(tmp_path, srv.base_url, "collect.dry_run=true", "data.sources.sample.sample_size=5")
    est = json.loads((dry["dir"] / "estimate.json").read_text())["estimate"]
    assert est["token_counter"] == "chars/4" and "no tokenizer for model 'fake'" in est["token_counter_fallback"]
    assert dry["result"]["token_counter"] == "chars/4"


def test_model_card_says_when_the_collect_manifest_is_missing(tmp_path: Path, caplog):
    cfg = compose_cfg("train", ["teacher=openai"])
    curate = tmp_path / "curate"
    write_manifest(curate, "curate", "h", inputs={"collect_dir": str(tmp_path / "deleted_collect")}, outputs={})
    with caplog.at_level(logging.WARNING):
        card = model_card(cfg, curate, {"prompt": "", "response_suffix": ""}, {"train_examples": 3})
    assert "Teacher: unknown, the collect manifest is missing" in card and "OpenAI's Terms of Use" in card
    assert "model card: the collect manifest is missing" in caplog.text and "deleted_collect" in caplog.text
    collect = tmp_path / "collect"
    write_manifest(collect, "collect", "h", inputs={"teacher": "llamacpp_local", "model": "smollm2"}, outputs={})
    write_manifest(curate, "curate", "h", inputs={"collect_dir": str(collect)}, outputs={})
    card = model_card(cfg, curate, {"prompt": "", "response_suffix": ""}, {"train_examples": 3})
    assert "Teacher: `llamacpp_local` (`smollm2`)" in card and "missing" not in card
