"""Quantize a GGUF with llama.cpp and run it (llama-cpp-python); export is in gpt4all.quantize.convert."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger(__name__)

QUANT_TYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "iq2_xs": "LLAMA_FTYPE_MOSTLY_IQ2_XS",  # needs an importance matrix
}


def quantize_gguf(src: Path, dst: Path, ftype: str) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp (no importance matrix); `ftype` is a key of QUANT_TYPES."""
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
