"""Language-model backends that score and generate, behind one interface: a HF model (plain, PEFT adapter on a
base, GPTQ or bitsandbytes-nf4 checkpoint) or a GGUF file through llama.cpp (optionally with a LoRA GGUF).

A model is named by a spec (config node `evaluate.models.<name>`, see gpt4all.core.schema.evaluate):
kind hf | peft | gguf | gptq | bnb | run_dir | base, plus path / base / lora / template.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt4all.core.manifest import read_manifest
from gpt4all.core.metrics import (
    METHODS,
    conditional_sequences,
    gpt4all_2023_sequences,
    instruction_prompt,
    sequence_nll_hf,
    sequence_nll_llama,
)

log = logging.getLogger(__name__)

KINDS = ("base", "hf", "peft", "gguf", "gptq", "bnb", "run_dir")


@dataclass
class Spec:
    """A resolved model: kind in hf | peft | gguf | gptq | bnb | base, its path(s) and prompt template."""
    kind: str
    path: str | None = None
    base: str | None = None  # peft: the base HF dir (null: the configured `model`)
    lora: str | None = None  # gguf: a llama.cpp LoRA GGUF applied at load time
    template: Any = None


@dataclass
class Generation:
    text: str
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class HFLM:
    """A transformers causal LM and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids; add_special=True adds what the tokenizer adds by default (e.g. BOS), as `tokenizer(text)`."""
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def nll(self, seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], batch_size: int = 4,
            progress: bool = True) -> list[tuple[float, int]]:
        return sequence_nll_hf(self.model, seqs, labels, self.pad_id, batch_size, progress)

    def generate(self, prompt: str, max_tokens: int = 64) -> Generation:
        ids = torch.tensor([self.encode(prompt)])
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=False, pad_token_id=self.pad_id)
        seconds = time.perf_counter() - start
        new = out[0, ids.shape[1]:]
        return Generation(self.tokenizer.decode(new, skip_special_tokens=True), int(new.numel()), seconds)

    def close(self) -> None:
        del self.model
        gc.collect()


class GGUFLM:
    """A GGUF model in llama.cpp (CPU), with an optional LoRA GGUF applied at load time."""

    def __init__(self, path: str | Path, lora: str | Path | None = None, n_threads: int = 1, n_ctx: int = 2048,
                 logits_all: bool = True):
        from gpt4all.core.llamacpp import Llama

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        self.llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, logits_all=logits_all,
                         n_threads=n_threads, n_ctx=n_ctx, verbose=False)
        self.pad_id = 0

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids; add_special=True adds the model's default special tokens (BOS when its metadata asks)."""
        return list(self.llm.tokenize(text.encode(), add_bos=add_special, special=True))

    def nll(self, seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], batch_size: int = 1,
            progress: bool = True) -> list[tuple[float, int]]:
        too_long = max((len(s) for s in seqs), default=0)
        if too_long > self.llm.n_ctx():
            raise ValueError(f"{self.path.name}: a sequence of {too_long} tokens exceeds n_ctx={self.llm.n_ctx()}")
        return sequence_nll_llama(self.llm, seqs, labels, progress)

    def generate(self, prompt: str, max_tokens: int = 64) -> Generation:
        self.llm.reset()
        start = time.perf_counter()
        out = self.llm(prompt, max_tokens=max_tokens, temperature=0.0)
        seconds = time.perf_counter() - start
        return Generation(out["choices"][0]["text"], int(out["usage"]["completion_tokens"]), seconds)

    def close(self) -> None:
        self.llm.close()


def resolve_run_dir(path: str | Path) -> Spec:
    """A previous run's output dir as a model: a train run's merged model or a quantize run's artifact."""
    m = read_manifest(path)
    template = m["inputs"].get("template")
    if m["stage"] == "train":
        return Spec("hf", m["outputs"]["merged"], template=template)
    if m["stage"] == "quantize":
        kind = m["metrics"].get("kind") or ("gguf" if "gguf" in m["outputs"] else "hf")
        if kind == "gguf_lora":
            return Spec("gguf", m["outputs"]["base_gguf"], lora=m["outputs"]["lora_gguf"], template=template)
        key = "gguf" if kind == "gguf" else "artifact" if "artifact" in m["outputs"] else "model"
        return Spec(kind, m["outputs"][key], template=template)
    raise ValueError(f"{path}: a '{m['stage']}' run holds no model; give a train or quantize run dir")


def _tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_lm(spec: Spec, model_cfg: Any = None, cache_dir: str | Path | None = None, seed: int = 0,
            n_threads: int = 1, n_ctx: int = 2048) -> HFLM | GGUFLM:
    """Load a resolved spec (`base` and `peft` without `base` use the `model` config node)."""
    from transformers import AutoModelForCausalLM

    if spec.kind == "gguf":
        return GGUFLM(spec.path, spec.lora, n_threads=n_threads, n_ctx=n_ctx)
    if spec.kind in ("base", "peft") and spec.base is None:
        from gpt4all.core.models import load_model, load_tokenizer

        if model_cfg is None:
            raise ValueError(f"a '{spec.kind}' model without `base` needs the `model` config node")
        model, tok = load_model(model_cfg, cache_dir, seed=seed), load_tokenizer(model_cfg, cache_dir)
        if spec.kind == "base":
            return HFLM(model, tok)
    elif spec.kind in ("peft", "base"):
        model = AutoModelForCausalLM.from_pretrained(str(spec.base), dtype=torch.float32)
        tok = _tokenizer(spec.base)
        if spec.kind == "base":
            return HFLM(model.eval(), tok)
    if spec.kind == "peft":
        from peft import PeftModel

        return HFLM(PeftModel.from_pretrained(model, str(spec.path)).eval(), tok)
    if spec.kind == "hf":
        return HFLM(AutoModelForCausalLM.from_pretrained(str(spec.path), dtype=torch.float32).eval(),
                    _tokenizer(spec.path))
    if spec.kind in ("gptq", "bnb"):
        if spec.kind == "gptq":
            _gptq_env()
        model = AutoModelForCausalLM.from_pretrained(str(spec.path), device_map="cpu")
        return HFLM(model.eval(), _tokenizer(spec.path))
    raise ValueError(f"unknown model kind {spec.kind!r}; valid: {', '.join(KINDS)}")


def _gptq_env() -> None:
    """gptqmodel on a small CPU needs an explicit worker count (see docs/quantize_evaluate.md)."""
    import os

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(2, os.cpu_count() or 1)))
    try:
        import gptqmodel  # noqa: F401
    except ImportError as err:
        raise RuntimeError("GPTQ checkpoints need gptqmodel: pip install -e '.[gptq]'") from err


def score_nll(lm: HFLM | GGUFLM, method: str, examples: Sequence[tuple[str, str, str]], template: Any = None,
              max_length: int = 512, batch_size: int = 4, progress: bool = True) -> list[float]:
    """One NLL per (instruction, input, reference output) example, by scoring method (see core.metrics)."""
    if method == "conditional":
        pairs = [(instruction_prompt(i, x), o) for i, x, o in examples]
        s = conditional_sequences(lm.encode, template, pairs, max_length)
    elif method == "gpt4all_2023":
        s = gpt4all_2023_sequences(lambda t: lm.encode(t, add_special=True), examples)
    else:
        raise ValueError(f"unknown scoring method {method!r}; valid: {', '.join(METHODS)}")
    return s.fold(lm.nll(s.seqs, s.labels, batch_size=batch_size, progress=progress))
