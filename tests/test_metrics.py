"""Ground-truth perplexity: clipping, HF batching/masking, and HF vs llama.cpp agreement on SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from gpt4all.core.metrics import (
    clipped_perplexity,
    perplexities,
    response_nll_gguf,
    response_nll_hf,
)
from gpt4all.core.template import encode_pair

TEMPLATE = OmegaConf.create(
    {"prompt": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", "response_suffix": "<|im_end|>\n"}
)
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ("What do bees make?", "Bees make honey."),
]


def test_clipped_perplexity():
    assert clipped_perplexity(0.0) == pytest.approx(1.0)
    assert clipped_perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert clipped_perplexity(math.log(1000.0)) == 100.0
    assert clipped_perplexity(1e6) == 100.0
    assert clipped_perplexity(float("nan")) == 100.0
    assert perplexities([math.log(2.0), float("nan"), 50.0], clip=10.0) == pytest.approx([2.0, 10.0, 10.0])


def test_hf_batching_and_masking(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = PAIRS + [("Say nothing.", "")]
    one = response_nll_hf(model, tok, TEMPLATE, pairs, batch_size=1, progress=False)
    three = response_nll_hf(model, tok, TEMPLATE, pairs, batch_size=3, progress=False)
    assert math.isnan(one[-1]) and math.isnan(three[-1])
    assert one[:-1] == pytest.approx(three[:-1], abs=1e-4)

    # Hand computation for one pair: HF's own label-masked loss over the response tokens only.
    ids, labels = encode_pair(
        lambda t: tok.encode(t, add_special_tokens=False), TEMPLATE, *PAIRS[3], max_length=512, add_suffix=False
    )
    assert labels.count(-100) > 5 and labels[-1] != -100
    with torch.inference_mode():
        loss = model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert one[3] == pytest.approx(loss, abs=1e-4)
    # Truncation keeps the response: a tiny max_length still scores it (prompt cut from the left).
    short = response_nll_hf(model, tok, TEMPLATE, PAIRS[:1], max_length=12, progress=False)
    assert math.isfinite(short[0])


def test_hf_matches_gguf_on_smollm2(cache_dir):
    from gpt4all.core.models import load_model, load_tokenizer, smollm2_gguf_path

    cfg = OmegaConf.create({"name": "smollm2", "source": "gguf", "gguf_file": None, "pretrained": None})
    model, tok = load_model(cfg, cache_dir), load_tokenizer(cfg, cache_dir)
    shuffled = [(p, PAIRS[(i + 1) % len(PAIRS)][1]) for i, (p, _) in enumerate(PAIRS)]

    hf = response_nll_hf(model, tok, TEMPLATE, PAIRS + shuffled, batch_size=5, progress=False)
    gg = response_nll_gguf(smollm2_gguf_path(), TEMPLATE, PAIRS + shuffled, progress=False)
    # The HF model is the dequantized Q4_1; llama.cpp also quantizes activations (q8) in its matmuls.
    rel = [abs(a - b) / b for a, b in zip(hf, gg)]
    assert max(rel) < 0.06 and sum(rel) / len(rel) < 0.03, rel

    true_ppl, wrong_ppl = perplexities(hf[: len(PAIRS)]), perplexities(hf[len(PAIRS) :])
    assert sum(t < w for t, w in zip(true_ppl, wrong_ppl)) >= len(PAIRS) - 1
    assert true_ppl[0] < 3.0  # "The capital of France is Paris." is the model's own answer
