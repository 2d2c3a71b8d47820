"""Schemas of the collect stage's nodes: `teacher` and `collect`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


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
class CollectSchema:
    dedup_prompts: bool = True
    limit: Optional[int] = None  # cap on the number of prompts sent, after mixing


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "teacher": TeacherSchema,
    "collect": CollectSchema,
}
