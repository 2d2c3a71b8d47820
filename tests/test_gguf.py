"""GGUF export, llama.cpp quantization and generation (offline; the SmolLM2 test takes ~10-40 s)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpt4all.core.models import load_model, load_tokenizer, smollm2_gguf_path
from gpt4all.quantize import gguf as qg

TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."


def _llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from gpt4all.core.llamacpp import Llama

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=1, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def _hf_logits(model_dir: Path, tokens: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with q/k scaled 10x: at random init attention is almost uniform, so a wrong q/k
    permutation would change the logits by under 1 %; sharpened, it changes them by about 60 %."""
    out = tmp_path_factory.mktemp("sharp_llama")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokens(tiny_model_dir) -> list[int]:
    ids = AutoTokenizer.from_pretrained(str(tiny_model_dir))(TEXT)["input_ids"]
    assert len(ids) > 8
    return ids


@pytest.fixture(scope="module")
def tiny_f16(tiny_model_dir, tmp_path_factory) -> Path:
    return qg.export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", smollm2_gguf_path())


def test_export_f32_matches_hf_logits(sharp_model_dir, tokens, tmp_path):
    out = qg.export_gguf(sharp_model_dir, tmp_path / "tiny-f32.gguf", smollm2_gguf_path(), dtype="f32")
    assert out.is_file() and not list(tmp_path.glob("*.tmp"))

    import gguf

    r = gguf.GGUFReader(str(out))
    assert r.fields["llama.embedding_length"].contents() == 64
    assert r.fields["llama.block_count"].contents() == 2
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert r.fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)
    assert "tokenizer.chat_template" in r.fields
    assert "output.weight" not in {t.name for t in r.tensors}  # tied embeddings

    ref, got = _hf_logits(sharp_model_dir, tokens), _llama_logits(out, tokens)
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) < 1e-2 * scale
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_wrong_qk_permutation_is_detected(sharp_model_dir, tokens, tmp_path, monkeypatch):
    """Negative control: without the q/k re-permutation the logits must disagree."""
    monkeypatch.setattr(qg, "_permute", lambda w, n_head: w)
    out = qg.export_gguf(sharp_model_dir, tmp_path / "bad.gguf", smollm2_gguf_path(), dtype="f32")
    ref, got = _hf_logits(sharp_model_dir, tokens), _llama_logits(out, tokens)
    assert float(np.abs(got - ref).max()) > 0.1 * float(np.abs(ref).max())


def test_quantize_q8_0_and_generate(tiny_f16, tmp_path):
    dst = qg.quantize_gguf(tiny_f16, tmp_path / "tiny-q8_0.gguf", "q8_0")
    assert dst.is_file() and dst.stat().st_size < tiny_f16.stat().st_size
    text = qg.generate(dst, "Hello", max_tokens=8)
    assert isinstance(text, str)


def _smollm2_f16(cache_dir: str, tmp_path: Path, **export: object) -> Path:
    cfg = OmegaConf.create({"source": "gguf", "gguf_file": None, "pretrained": None})
    model_dir = tmp_path / "smollm2"
    load_model(cfg, cache_dir).save_pretrained(model_dir)
    load_tokenizer(cfg, cache_dir).save_pretrained(model_dir)
    f16 = qg.export_gguf(model_dir, tmp_path / "smollm2-f16.gguf", smollm2_gguf_path(), **export)
    shutil.rmtree(model_dir)
    return f16


def test_smollm2_export_q4_0_answers(cache_dir, tmp_path):
    f16 = _smollm2_f16(cache_dir, tmp_path)
    q4 = qg.quantize_gguf(f16, tmp_path / "smollm2-q4_0.gguf", "q4_0")
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert "Paris" in qg.generate(q4, prompt, max_tokens=24)


def test_quantize_unknown_ftype(tiny_f16, tmp_path):
    with pytest.raises(ValueError, match="q4_k_m"):
        qg.quantize_gguf(tiny_f16, tmp_path / "x.gguf", "q3_xx")


def test_quantize_failure_leaves_no_output(tmp_path):
    src, dst = tmp_path / "not.gguf", tmp_path / "out.gguf"
    src.write_bytes(b"this is not a gguf file" * 100)
    with pytest.raises(RuntimeError, match="q4_0") as err:
        qg.quantize_gguf(src, dst, "q4_0")
    assert str(src) in str(err.value) and str(dst) in str(err.value)
    assert not dst.exists()


def test_vocab_mismatch_raises(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad_vocab"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vocab size mismatch"):
        qg.export_gguf(bad, tmp_path / "bad.gguf", smollm2_gguf_path())
    assert not list(tmp_path.glob("*.gguf*"))


def test_export_rejects_bad_dtype(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        qg.export_gguf(tiny_model_dir, tmp_path / "x.gguf", smollm2_gguf_path(), dtype="q4_0")


BINDINGS_PYTHON = os.environ.get("GPT4ALL_BINDINGS_PYTHON")


@pytest.mark.skipif(not BINDINGS_PYTHON, reason="set GPT4ALL_BINDINGS_PYTHON to a python of a separate venv with "
                    "Nomic's gpt4all bindings (never install them in this project's venv)")
def test_smollm2_gguf_answers_the_same_in_nomic_gpt4all_bindings(cache_dir, tmp_path):
    """The exported file (pre-tokenizer starcoder) loads in GPT4All's own bindings and answers as llama.cpp does."""
    f16 = _smollm2_f16(cache_dir, tmp_path, pre_tokenizer="starcoder")
    script = Path(__file__).resolve().parents[1] / "experiments" / "gpt4all_bindings" / "check_bindings.py"
    done = subprocess.run([BINDINGS_PYTHON, str(script), str(f16)], check=False, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    turn = f"<|im_start|>user\n{result['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert result["answer"].strip() == qg.generate(f16, system + turn, max_tokens=64).strip()
    assert "Paris" in result["answer"]
