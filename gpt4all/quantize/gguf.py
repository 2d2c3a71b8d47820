"""Export a HF Llama checkpoint to GGUF, quantize it with llama.cpp, and run it (llama-cpp-python)."""

from __future__ import annotations

import ctypes
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

log = logging.getLogger(__name__)

ARCH = gguf.MODEL_ARCH.LLAMA
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]

# general.* keys describing the source file's encoding rather than the model: never copied.
_SKIP_GENERAL = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}

EXPORT_DTYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}

QUANT_TYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo transformers' rotary layout for q/k rows, as llama.cpp's convert_hf_to_gguf.py does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir} (save the model with save_pretrained)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or {}
    kind = rope.get("rope_type", "default")
    if cfg.get("rope_scaling") or kind != "default":
        raise ValueError(f"unsupported RoPE scaling {cfg.get('rope_scaling') or kind!r}: only plain RoPE is exported")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


@contextmanager
def gguf_writer(out_path: Path, arch: str = ARCH_NAME) -> Iterator[gguf.GGUFWriter]:
    """A GGUFWriter on `<out>.tmp` whose header, metadata and tensors are written and renamed into place
    when the block ends; on any error the partial file is deleted."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _copy_metadata(writer: gguf.GGUFWriter, reader: gguf.GGUFReader, overrides: dict[str, str] | None = None) -> None:
    """Copy tokenizer.* and descriptive general.* keys from a source GGUF (string `overrides` replace values)."""
    overrides = overrides or {}
    for key, field in reader.fields.items():
        if not key.startswith(("tokenizer.", "general.")) or key in _SKIP_GENERAL:
            continue
        if key in overrides:
            writer.add_string(key, overrides[key])
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)


def export_gguf(model_dir: Path, out_path: Path, metadata_gguf: Path | gguf.GGUFReader, dtype: str = "f16",
                pre_tokenizer: str | None = None) -> Path:
    """Write a HF Llama checkpoint (safetensors) as a GGUF file, atomically.

    Tokenizer and general metadata come from `metadata_gguf` (the GGUF the tokenizer came from); the llama.*
    hyperparameters come from the checkpoint's config.json. `dtype` is "f16" or "f32" (norms stay f32).
    `pre_tokenizer` overrides tokenizer.ggml.pre (e.g. "starcoder" for older llama.cpp builds that do not know
    "smollm": same split rule; see docs/quantize_evaluate.md).
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ValueError(f"only Llama-architecture checkpoints are supported, got model_type={cfg.get('model_type')!r}")

    reader = metadata_gguf if isinstance(metadata_gguf, gguf.GGUFReader) else gguf.GGUFReader(str(metadata_gguf))
    metadata_gguf = Path(getattr(reader.data, "filename", None) or str(metadata_gguf))
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise ValueError(f"{metadata_gguf} has no tokenizer.ggml.tokens to copy")
    n_vocab_tok = len(reader.fields["tokenizer.ggml.tokens"].data)
    state = _load_state_dict(model_dir)
    n_vocab = int(cfg["vocab_size"])
    n_embd_rows = state["model.embed_tokens.weight"].shape[0]
    if not n_vocab == n_embd_rows == n_vocab_tok:
        raise ValueError(
            f"vocab size mismatch: config.json says {n_vocab}, embed_tokens has {n_embd_rows} rows, "
            f"but the tokenizer in {metadata_gguf} has {n_vocab_tok} tokens"
        )

    n_layers, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    n_embd = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    tied = bool(cfg.get("tie_word_embeddings", False))

    with gguf_writer(out_path) as writer:
        _copy_metadata(writer, reader, {"tokenizer.ggml.pre": pre_tokenizer} if pre_tokenizer else None)
        writer.add_context_length(int(cfg["max_position_embeddings"]))
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(int(cfg["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_freq_base(_rope_theta(cfg))
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
        writer.add_vocab_size(n_vocab)
        writer.add_file_type(int(EXPORT_DTYPES[dtype]))

        tmap = gguf.get_tensor_name_map(ARCH, n_layers)
        for name, tensor in state.items():
            if name == "lm_head.weight" and tied:
                continue
            if name.endswith("rotary_emb.inv_freq"):
                continue
            new_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise ValueError(f"cannot map tensor {name!r} to a GGUF name")
            t = tensor.float()
            if name.endswith("self_attn.q_proj.weight"):
                t = _permute(t, n_head)
            elif name.endswith("self_attn.k_proj.weight"):
                t = _permute(t, n_kv)
            arr = t.numpy()
            if dtype == "f16" and arr.ndim > 1:
                arr = arr.astype(np.float16)
            writer.add_tensor(new_name, np.ascontiguousarray(arr))
        if not tied and "lm_head.weight" not in state:
            raise ValueError(f"untied embeddings but no lm_head.weight in {model_dir}")

    return out_path


def quantize_gguf(src: Path, dst: Path, ftype: str) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp; `ftype` is one of q4_0, q4_1, q5_0, q8_0, q4_k_m."""
    import llama_cpp

    if ftype not in QUANT_TYPES:
        raise ValueError(f"unknown quantization type {ftype!r}; valid: {', '.join(QUANT_TYPES)}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[ftype])
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        dst.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp failed to quantize {src} -> {dst} as {ftype} (return code {rc})")
    return dst


def generate(gguf_path: Path, prompt: str, max_tokens: int = 32, n_threads: int = 1) -> str:
    """Greedy (temperature 0) completion of a raw prompt with llama.cpp."""
    from gpt4all.core.llamacpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=512, n_threads=n_threads, verbose=False)
    try:
        out = llm(prompt, max_tokens=max_tokens, temperature=0.0)
    finally:
        llm.close()
    return out["choices"][0]["text"]
