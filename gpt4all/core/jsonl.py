"""JSONL (and CSV / TSV) reading and writing with errors that name the file and line."""

from __future__ import annotations

import csv
import json
import sys
import os
from pathlib import Path
from typing import Any, Iterator


class JsonlError(ValueError):
    """A malformed line; the message names file and line number."""


def parse_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) for each non-blank line, or (line number, error message) for a malformed one."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                yield lineno, f"not valid JSON ({err.msg} at column {err.colno})"
                continue
            yield lineno, rec if isinstance(rec, dict) else f"expected a JSON object, got {type(rec).__name__}"


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record or error message) for every record of a local .jsonl/.json, .tsv or .csv file."""
    path = Path(path)
    if path.suffix in (".tsv", ".csv"):
        csv.field_size_limit(sys.maxsize)
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            for row in reader:
                yield reader.line_num, row
        return
    yield from parse_jsonl(path)


def iter_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each non-blank line; raise JsonlError naming file:line on bad input."""
    for lineno, rec in parse_jsonl(path):
        if isinstance(rec, str):
            raise JsonlError(f"{path}:{lineno}: {rec}")
        for key in required:
            if key not in rec:
                raise JsonlError(f"{path}:{lineno}: missing field '{key}' (fields: {', '.join(rec) or 'none'})")
        yield lineno, rec


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [rec for _, rec in iter_jsonl(path, required)]


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write records atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


class JsonlAppender:
    """Append records one at a time, flushed to disk as they arrive (so a crash loses nothing written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
