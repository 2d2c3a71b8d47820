"""Prompt sources (config group data/source). One `Source` reads a local file or a hub dataset and turns each
row into a prompt by its `format`; `mix` combines sources, normalises and de-duplicates.

Formats: `field` (one column is the prompt: P3's `inputs_pretokenized`, any JSONL), `oig` (the first human
turn of a LAION OIG `<human>: ... <bot>: ...` text), `title_body` (StackOverflow: title, blank line, body).
Local files: `.jsonl` / `.json` (one object a line), `.tsv`, `.csv`. A malformed row stops the load with
file and line (`on_error: raise`), or is skipped, logged with file and line, and counted (`on_error: skip`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all.core.jsonl import JsonlError, read_records

log = logging.getLogger(__name__)

FORMATS = ("field", "oig", "title_body")


@dataclass
class Prompt:
    id: str
    prompt: str
    source: str


def normalize(text: str) -> str:
    """Whitespace-normalised prompt text (what is sent and what duplicates are judged on)."""
    return re.sub(r"[ \t]+", " ", re.sub(r"\r\n?", "\n", text)).strip()


def oig_human_turn(text: str) -> str | None:
    """The first human turn of an OIG `<human>: ... <bot>: ...` text."""
    m = re.search(r"<human>:(.*?)(?:<bot>:|$)", text, flags=re.DOTALL)
    return m.group(1).strip() if m else None


def _stable_id(name: str, text: str) -> str:
    return f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


class BadRow(ValueError):
    """A row that yields no prompt; the message says why."""


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    """(line number, row or BadRow) for every record of a local JSONL, TSV or CSV file."""
    for lineno, rec in read_records(path):
        yield lineno, BadRow(rec) if isinstance(rec, str) else rec


class Source:
    """Prompts from a local file (`path`; null with no `dataset`: the bundled samples) or a hub `dataset`."""

    def __init__(
        self,
        name: str,
        path: str | None = None,
        dataset: str | None = None,
        format: str = "field",
        prompt_field: str = "prompt",
        title_field: str | None = None,
        source_field: str | None = None,
        id_field: str | None = None,
        config: str | None = None,
        data_files: str | None = None,
        split: str = "train",
        sample_size: int | None = None,
        seed: int = 0,
        on_error: str = "raise",
    ):
        if format not in FORMATS:
            raise ValueError(f"data source '{name}': format must be one of {', '.join(FORMATS)}, got {format!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data source '{name}': on_error must be raise or skip, got {on_error!r}")
        if format == "title_body" and not title_field:
            raise ValueError(f"data source '{name}': format title_body needs title_field")
        self.name, self.dataset, self.format = name, dataset, format
        self.path = Path(path) if path else None
        if self.path is None and dataset is None:
            self.path = Path(str(importlib.resources.files("gpt4all.data") / "sample_prompts.jsonl"))
        self.prompt_field, self.title_field, self.source_field, self.id_field = prompt_field, title_field, source_field, id_field
        self.config, self.data_files, self.split = config, data_files, split
        self.sample_size, self.seed, self.on_error = sample_size, seed, on_error
        self.dropped: Counter[str] = Counter()  # reason -> rows skipped (on_error: skip)

    def load(self) -> list[Prompt]:
        rows = self._local_rows() if self.path else self._hub_rows()
        items = []
        for where, row in rows:
            try:
                if isinstance(row, BadRow):
                    raise row
                items.append(self.to_prompt(row))
            except BadRow as err:
                if self.on_error == "raise":
                    raise JsonlError(f"{where}: {err}") from None
                self.dropped[str(err).split(" (")[0]] += 1
                log.warning("data source '%s': skipped %s: %s", self.name, where, err)
        if self.dropped:
            log.warning("data source '%s': skipped %d malformed rows: %s", self.name, sum(self.dropped.values()),
                        dict(self.dropped))
        if self.sample_size is not None and self.sample_size < len(items):
            random.Random(self.seed).shuffle(items)  # a prefix of one seeded order: a larger sample keeps a smaller one
            items = items[: self.sample_size]
        return items

    def _local_rows(self) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
        assert self.path is not None
        if not self.path.is_file():
            raise FileNotFoundError(f"data source '{self.name}': {self.path} not found")
        for lineno, row in read_rows(self.path):
            yield f"{self.path}:{lineno}", row

    def _hub_rows(self) -> Iterator[tuple[str, dict[str, Any] | BadRow]]:
        import datasets

        ds = datasets.load_dataset(self.dataset, self.config, data_files=self.data_files, split=self.split)
        if self.sample_size is not None and self.sample_size * 2 < len(ds):  # headroom for rows that give no prompt
            ds = ds.shuffle(seed=self.seed).select(range(self.sample_size * 2))
        for i, row in enumerate(ds):
            yield f"{self.dataset}[{self.split}][{i}]", row

    def field(self, row: dict[str, Any], key: str) -> str:
        if key not in row:
            raise BadRow(f"missing field '{key}' (fields: {', '.join(row) or 'none'})")
        value = row[key]
        if not isinstance(value, str):
            raise BadRow(f"field '{key}' must be a string, got {type(value).__name__}")
        return value

    def to_prompt(self, row: dict[str, Any]) -> Prompt:
        """The row's prompt by this source's format; BadRow when it has none."""
        text = self.field(row, self.prompt_field)
        if self.format == "oig":
            text = oig_human_turn(text) or ""
            if not text:
                raise BadRow(f"no '<human>:' turn in field '{self.prompt_field}'")
        elif self.format == "title_body":
            text = f"{self.field(row, self.title_field).strip()}\n\n{text.strip()}"  # type: ignore[arg-type]
        text = normalize(text)
        if not text:
            raise BadRow(f"empty prompt in field '{self.prompt_field}'")
        source = str(row.get(self.source_field, self.name)) if self.source_field else self.name
        pid = str(row[self.id_field]) if self.id_field and row.get(self.id_field) not in (None, "") else _stable_id(self.name, text)
        return Prompt(pid, text, source)


class JsonlSource(Source):
    """A local file with a field mapping: `JsonlSource(path, name, ...)` (null path: the bundled samples)."""

    def __init__(self, path: str | None, name: str, **kw: Any):
        super().__init__(name=name, path=path, **kw)


class HubSource(Source):
    """A Hugging Face hub dataset (needs internet): `HubSource(dataset, name, format=..., ...)`."""

    def __init__(self, dataset: str, name: str, **kw: Any):
        super().__init__(name=name, dataset=dataset, **kw)


def mix(sources: Iterable[Source], dedup: bool = True) -> tuple[list[Prompt], dict[str, int]]:
    """Load every source and drop repeated prompt texts (case-insensitive, after normalisation).

    Returns the prompts and the duplicates dropped per source.
    """
    seen: set[str] = set()
    out: list[Prompt] = []
    dropped: Counter[str] = Counter()
    for src in sources:
        for p in src.load():
            key = p.prompt.lower()
            if dedup and key in seen:
                dropped[p.source] += 1
                continue
            seen.add(key)
            out.append(p)
    return out, dict(dropped)
