"""Schemas of the curate stage's nodes: `curation` and `curate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


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
class CurateSchema:
    input_dir: Optional[str] = None  # a collect run dir; null: the latest one under paths.output_dir


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "curation": CurationSchema,
    "curate": CurateSchema,
}
