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


# ---------------------------------------------------------------- scoring methods on a tiny model, by hand


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # sharpen attention so that context matters to the scores
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_conditional_equals_a_hand_computed_reference(tiny):
    """Mean over response tokens only of -log p(token | everything before it), the prompt being context."""
    from gpt4all.core.lm import HFLM, score_nll
    from gpt4all.core.metrics import instruction_prompt

    model, tok = tiny
    examples = [("Summarize this.", "The cat sat on the mat all day long.", "A cat sat."), ("Say hi.", "", "Hi there!")]
    got = score_nll(HFLM(model, tok), "conditional", examples, TEMPLATE, batch_size=2, progress=False)
    for (ins, inp, out), value in zip(examples, got):
        p = tok.encode(TEMPLATE.prompt.replace("{prompt}", instruction_prompt(ins, inp)), add_special_tokens=False)
        r = tok.encode(out, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
        ref = -sum(logp[len(p) - 1 + j, r[j]].item() for j in range(len(r))) / len(r)  # position t predicts t+1
        assert value == pytest.approx(ref, abs=1e-6)
        wrong_shift = -sum(logp[len(p) + j, r[j]].item() for j in range(len(r) - 1)) / (len(r) - 1)
        assert value != pytest.approx(wrong_shift, abs=1e-3)


def _original_script(model, tokenizer, instruction, inp, output, stride):
    """GPT4All's eval_self_instruct.py eval_example (2023), transcribed; returns log(ppl)."""
    prompt = instruction + ' ' + inp
    gt = prompt + ' ' + output
    input = tokenizer(prompt, return_tensors="pt")
    gt_input = tokenizer(gt, return_tensors="pt")
    nlls = []
    prev_end_loc = 0
    seq_len = gt_input['input_ids'].size(1)
    for begin_loc in range(input['input_ids'].size(1), gt_input['input_ids'].size(1), stride):
        end_loc = min(begin_loc + stride, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = gt_input['input_ids'][:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss * trg_len
        nlls.append(neg_log_likelihood)
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return (torch.stack(nlls).sum() / end_loc).item()


@pytest.mark.parametrize("stride", [512, 7, 5])
def test_gpt4all_2023_repeats_the_original_script(tiny, stride):
    from gpt4all.core.lm import HFLM
    from gpt4all.core.metrics import gpt4all_2023_sequences

    model, tok = tiny
    examples = [("Rewrite the sentence.", "If you have questions, let me know.", "Ask me anything."),
                ("Write a haiku about rain.", "", "Soft rain on the roof\nthe garden drinks in silence\nmorning smells of earth"),
                ("Translate to French.", "Good morning", "Bonjour")]
    lm = HFLM(model, tok)
    s = gpt4all_2023_sequences(lambda t: lm.encode(t, add_special=True), examples, stride=stride)
    got = s.fold(lm.nll(s.seqs, s.labels, batch_size=3, progress=False))
    for ex, value in zip(examples, got):
        ref = _original_script(model, tok, *ex, stride=stride)
        if math.isnan(ref):  # a one-token window: HF's mean over zero targets
            assert math.isnan(value)
        else:
            assert value == pytest.approx(ref, abs=1e-5)
    if stride == 512:
        assert len(s.seqs) == 3  # one window each; the prompt is never fed
        assert all(seq[0] != tok.encode("Rewrite")[0] for seq in s.seqs)


def test_nan_policy():
    assert perplexities([float("nan"), math.log(3.0)], clip=100.0, nan_value=0.0) == pytest.approx([0.0, 3.0])
    assert clipped_perplexity(float("nan"), clip=50.0) == 50.0


def test_hf_and_f16_gguf_agree_within_one_percent(tiny, tmp_path):
    """The same model through HF and through its f16 GGUF (llama.cpp), both scoring methods."""
    from gpt4all.core.lm import GGUFLM, HFLM, score_nll
    from gpt4all.quantize.convert import export_gguf

    model, tok = tiny
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    f16 = export_gguf(tmp_path / "hf", tmp_path / "m-f16.gguf", "f16")
    examples = [(p, "", r) for p, r in PAIRS]
    gg = GGUFLM(f16, n_ctx=512)
    try:
        for method in ("conditional", "gpt4all_2023"):
            a = perplexities(score_nll(HFLM(model, tok), method, examples, TEMPLATE, progress=False), clip=1e9)
            b = perplexities(score_nll(gg, method, examples, TEMPLATE, progress=False), clip=1e9)
            assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.01, (method, a, b)
    finally:
        gg.close()
