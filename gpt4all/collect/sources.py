"""Prompt sources (config group data/source). Each yields Prompt records; `mix` combines and de-duplicates."""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gpt4all.core.jsonl import iter_jsonl

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    id: str
    prompt: str
    source: str


def normalize(text: str) -> str:
    """Whitespace-normalised prompt text (what is sent and what duplicates are judged on)."""
    return re.sub(r"[ \t]+", " ", re.sub(r"\r\n?", "\n", text)).strip()


def _sample(items: list[Prompt], size: int | None, seed: int) -> list[Prompt]:
    if size is None or size >= len(items):
        return items
    return random.Random(seed).sample(items, size)


def _stable_id(name: str, text: str) -> str:
    return f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


class JsonlSource:
    """Prompts from a JSONL file with a field mapping (null path: the bundled sample prompts)."""

    def __init__(
        self,
        path: str | None,
        name: str,
        prompt_field: str = "prompt",
        source_field: str | None = None,
        id_field: str | None = None,
        sample_size: int | None = None,
        seed: int = 0,
    ):
        self.path = Path(path) if path else Path(str(importlib.resources.files("gpt4all.data") / "sample_prompts.jsonl"))
        self.name, self.prompt_field, self.source_field, self.id_field = name, prompt_field, source_field, id_field
        self.sample_size, self.seed = sample_size, seed

    def load(self) -> list[Prompt]:
        if not self.path.is_file():
            raise FileNotFoundError(f"data source '{self.name}': {self.path} not found")
        items = []
        for lineno, rec in iter_jsonl(self.path, required=(self.prompt_field,)):
            text = rec[self.prompt_field]
            if not isinstance(text, str):
                raise ValueError(f"{self.path}:{lineno}: field '{self.prompt_field}' must be a string")
            source = str(rec.get(self.source_field, self.name)) if self.source_field else self.name
            pid = str(rec[self.id_field]) if self.id_field and self.id_field in rec else _stable_id(self.name, text)
            items.append(Prompt(pid, normalize(text), source))
        return _sample(items, self.sample_size, self.seed)


class HubSource:
    """Prompts from a Hugging Face hub dataset (needs internet): OIG chip2, StackOverflow, P3, or any field."""

    def __init__(
        self,
        dataset: str,
        name: str,
        split: str = "train",
        format: str = "field",
        prompt_field: str = "text",
        title_field: str | None = None,
        config: str | None = None,
        data_files: str | None = None,
        sample_size: int | None = None,
        seed: int = 0,
    ):
        self.dataset, self.name, self.split, self.format = dataset, name, split, format
        self.prompt_field, self.title_field, self.config, self.data_files = prompt_field, title_field, config, data_files
        self.sample_size, self.seed = sample_size, seed

    def load(self) -> list[Prompt]:
        import datasets

        ds = datasets.load_dataset(self.dataset, self.config, data_files=self.data_files, split=self.split)
        if self.sample_size is not None and self.sample_size < len(ds):
            ds = ds.shuffle(seed=self.seed).select(range(self.sample_size * 2 if self.format == "oig" else self.sample_size))
        items = [p for p in (self.to_prompt(r) for r in ds) if p]
        return _sample(items, self.sample_size, self.seed)

    def to_prompt(self, row: dict[str, Any]) -> Prompt | None:
        if self.format == "oig":
            text = oig_human_turn(row[self.prompt_field])
        elif self.format == "title_body":
            text = f"{row[self.title_field]}\n\n{row[self.prompt_field]}"
        else:
            text = row[self.prompt_field]
        if not text:
            return None
        text = normalize(text)
        return Prompt(_stable_id(self.name, text), text, self.name)


def oig_human_turn(text: str) -> str | None:
    """The first human turn of an OIG `<human>: ... <bot>: ...` text."""
    m = re.search(r"<human>:(.*?)(?:<bot>:|$)", text, flags=re.S)
    return m.group(1).strip() if m else None


def mix(sources: Iterable[Any], dedup: bool = True) -> tuple[list[Prompt], dict[str, int]]:
    """Load every source and drop repeated prompt texts; returns prompts and per-source duplicate counts."""
    seen: set[str] = set()
    out: list[Prompt] = []
    dropped: dict[str, int] = {}
    for src in sources:
        for p in src.load():
            key = p.prompt.lower()
            if dedup and key in seen:
                dropped[p.source] = dropped.get(p.source, 0) + 1
                continue
            seen.add(key)
            out.append(p)
    return out, dropped
