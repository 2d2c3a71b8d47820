"""Evaluation suites load in both formats, and the eval set never leaks into a training source."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from gpt4all.collect.sources import JsonlSource, normalize
from gpt4all.evaluate.suites import load_suite


def ev(**kw):
    base = {"name": "t", "format": "pairs", "path": None, "hf_dataset": None, "hf_config": None, "hf_split": "train",
            "limit": None}
    return OmegaConf.create({**base, **kw})


def test_bundled_sample_suite():
    examples = load_suite(ev())
    assert len(examples) == 30 and all(e.prompt and e.reference for e in examples)
    assert len(load_suite(ev(limit=5))) == 5


def test_self_instruct_format_from_a_local_copy(shared_data):
    examples = load_suite(ev(format="self_instruct", path=str(shared_data / "self_instruct" / "user_oriented_instructions.jsonl")))
    assert len(examples) == 252
    first = json.loads((shared_data / "self_instruct" / "user_oriented_instructions.jsonl").open().readline())
    assert examples[0].prompt.startswith(first["instruction"]) and examples[0].reference == first["instances"][0]["output"]


def test_wrong_format_names_the_record(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
    with pytest.raises(ValueError, match=r"suite\.jsonl:2: eval record lacks 'output'"):
        load_suite(ev(path=str(path)))


def test_self_instruct_eval_set_is_in_no_training_source(shared_data):
    """The Self-Instruct authors ask that their evaluation set never be used for training."""
    eval_texts = {normalize(e.prompt).lower() for e in load_suite(ev(
        format="self_instruct", path=str(shared_data / "self_instruct" / "user_oriented_instructions.jsonl")))}
    eval_instructions = {normalize(json.loads(line)["instruction"]).lower()
                         for line in (shared_data / "self_instruct" / "user_oriented_instructions.jsonl").open()}
    sources = [JsonlSource(None, "sample", source_field="source"),
               JsonlSource(str(shared_data / "p3_t0" / "p3_t0_sample.jsonl"), "p3"),
               JsonlSource(str(shared_data / "gpteacher" / "codegen.jsonl"), "gpteacher")]
    for src in sources:
        prompts = {p.prompt.lower() for p in src.load()}
        assert not prompts & (eval_texts | eval_instructions), src.name


def test_jsonl_suite_with_a_field_mapping(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"q": "Add 2 and 2.", "a": "4", "ctx": null}\n{"q": "Name a fruit.", "a": "Apple.", "ctx": "Red."}\n')
    fields = {"id": None, "instruction": "q", "input": "ctx", "output": "a"}
    examples = load_suite(ev(format="jsonl", path=str(path), fields=fields))
    assert [(e.instruction, e.input, e.reference) for e in examples] == [("Add 2 and 2.", "", "4"),
                                                                         ("Name a fruit.", "Red.", "Apple.")]
    assert examples[1].prompt == "Name a fruit.\n\nRed." and examples[0].id.endswith("mine.jsonl:1")
    with pytest.raises(ValueError, match="needs eval.path"):
        load_suite(ev(format="jsonl", fields=fields))
