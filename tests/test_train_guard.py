"""The Self-Instruct evaluation set never enters a training mixture: shipped hashes match the public file, and
the data module refuses a dataset that contains its instructions."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from gpt4all.train.data import ChatDataModule
from gpt4all.train.guard import EvalLeakError, instruction_hashes, text_hash
from gpt4all.train.self_instruct_hashes import HASHES

TEMPLATE = OmegaConf.create({"prompt": "{prompt}\n", "response_suffix": ""})


@pytest.fixture(scope="module")
def eval_file(shared_data):
    return shared_data / "self_instruct" / "user_oriented_instructions.jsonl"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_shipped_hashes_are_the_public_eval_set(eval_file):
    rows = [json.loads(line) for line in eval_file.read_text().splitlines() if line.strip()]
    assert len(rows) == 252
    assert instruction_hashes(eval_file) == HASHES
    assert all(text_hash(r["instruction"]) in HASHES for r in rows)


def save(tmp_path, prompts):
    d = tmp_path / "mixture"
    Dataset.from_dict({"id": [f"x{i}" for i in range(len(prompts))], "prompt": prompts,
                       "response": ["ok"] * len(prompts), "source": ["t"] * len(prompts)}).save_to_disk(str(d))
    return d


def test_eval_instructions_are_refused(eval_file, tokenizer, tmp_path):
    rows = [json.loads(line) for line in eval_file.read_text().splitlines()[:3]]
    inst = rows[0]["instances"][0]
    prompts = [
        "What is the capital of France?",
        rows[1]["instruction"].upper() + "  ",  # case and whitespace do not hide it
        f"{rows[0]['instruction']}\n\n{inst['input']}",  # instruction + input, as the evaluate stage builds it
        "Name a primary color.",
    ]
    dm = ChatDataModule(save(tmp_path, prompts), tokenizer, TEMPLATE, val_fraction=0.0)
    with pytest.raises(EvalLeakError, match=r"mixture: 2 training row\(s\).*row 1 \(id x1\).*row 2 \(id x2\)"):
        dm.setup("fit")
    clean = ChatDataModule(save(tmp_path / "clean", [prompts[0], prompts[3]]), tokenizer, TEMPLATE, val_fraction=0.0)
    assert clean.num_train_examples == 2


def test_extra_eval_file_and_opt_out(tokenizer, tmp_path):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"instruction": "Tell me a secret.", "input": ""}) + "\n")
    d = save(tmp_path, ["Tell me a secret.", "Say hi."])
    with pytest.raises(EvalLeakError, match="held_out.jsonl"):
        ChatDataModule(d, tokenizer, TEMPLATE, eval_guard_path=str(held_out)).setup()
    assert ChatDataModule(d, tokenizer, TEMPLATE, eval_guard=False, val_fraction=0.0).num_train_examples == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        instruction_hashes(bad)
