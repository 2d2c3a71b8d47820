"""4-bit HF checkpoints: GPTQ through gptqmodel (AutoGPTQ's maintained successor) and nf4 through bitsandbytes.
Both write a directory that loads with `AutoModelForCausalLM.from_pretrained(dir)`."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def dir_size_mb(path: Path) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


def weights_size_mb(path: Path) -> float:
    """Size of the weights alone (safetensors), comparable across formats."""
    path = Path(path)
    return dir_size_mb(path) if path.is_file() else round(
        sum(p.stat().st_size for p in path.glob("*.safetensors")) / 2**20, 2)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def calibration_texts(dataset_dir: str | Path, template: Any, n: int, seed: int = 0) -> list[str]:
    """`n` training examples rendered exactly as the model saw them (prompt template + response + suffix)."""
    import datasets

    from gpt4all.core.template import render_prompt

    try:
        ds = datasets.load_from_disk(str(dataset_dir))
    except IndexError:  # datasets cannot concatenate the zero shards of an empty saved dataset
        ds = []
    if len(ds) == 0:
        raise ValueError(f"{dataset_dir}: the curated dataset is empty, nothing to calibrate with")
    ds = ds.shuffle(seed=seed, keep_in_memory=True)  # no cache file in the (cached) curate run dir
    rows = ds.select(range(min(n, len(ds))))
    return [render_prompt(template, r["prompt"]) + r["response"] + str(template.response_suffix) for r in rows]


def gptq_quantize(model_dir: Path, out_dir: Path, texts: Sequence[str], bits: int = 4, group_size: int = 64,
                  desc_act: bool = False, damp_percent: float = 0.05, max_tokens: int = 256,
                  cache_dir: str | Path | None = None) -> Path:
    """GPTQ-quantize a HF checkpoint on CPU with gptqmodel; the calibration texts are cut at `max_tokens`."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(2, os.cpu_count() or 1)))
    if cache_dir:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).expanduser() / "torchinductor"))
    try:
        from gptqmodel import GPTQModel, QuantizeConfig
    except ImportError as err:
        raise RuntimeError("quant=gptq_4bit needs gptqmodel: pip install -e '.[gptq]'") from err
    from transformers import AutoTokenizer

    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir).resolve()  # absolute: we chdir below
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    calib = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"][:max_tokens]
        calib.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    qcfg = QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, damp_percent=damp_percent)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(out_dir.parent):  # gptqmodel writes ./logs/
        model = GPTQModel.load(str(model_dir), qcfg, device="cpu")
        model.quantize(calib, batch_size=1)
        model.save(str(out_dir))
    _copy_tokenizer(model_dir, out_dir)
    del model
    return out_dir


def bnb_quantize(model_dir: Path, out_dir: Path, quant_type: str = "nf4", double_quant: bool = False,
                 compute_dtype: str = "float32") -> Path:
    """Quantize a HF checkpoint to 4 bits with bitsandbytes (nf4 or fp4) and save it (works on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=qcfg, device_map="cpu")
    model.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out_dir))
    del model
    return Path(out_dir)
