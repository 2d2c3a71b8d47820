"""Schemas of the evaluate stage's nodes: `eval` and `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
class EvaluateSchema:
    include_base: bool = True
    train_dir: Optional[str] = None  # add the finetuned model of this train run
    quantize_dir: Optional[str] = None  # add the quantized model of this quantize run
    latest: bool = False  # add the latest train and quantize runs when their dirs are null


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "eval": EvalSchema,
    "evaluate": EvaluateSchema,
}
