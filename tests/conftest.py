"""Shared fixtures: a tiny random Llama with the SmolLM2 tokenizer, saved as a HF checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TINY_MODEL_CFG = {
    "name": "tiny_random",
    "source": "tiny_random",
    "pretrained": None,
    "gguf_file": None,
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "max_position_embeddings": 512,
    },
}


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Model cache shared by the whole test session (the GGUF tokenizer is converted once)."""
    return Path(os.environ.get("GPT4ALL_LAB_CACHE", Path.home() / ".cache" / "gpt4all-lab"))


@pytest.fixture(scope="session")
def tiny_model_cfg():
    return OmegaConf.create(TINY_MODEL_CFG)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_cfg, cache_dir) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer, saved with save_pretrained."""
    from gpt4all.core.models import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = load_tokenizer(tiny_model_cfg, cache_dir)
    model = load_model(tiny_model_cfg, cache_dir, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
