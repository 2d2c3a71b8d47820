"""Evaluation suites (config group `eval`): instruction / reference-response pairs."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gpt4all.core.jsonl import iter_jsonl


@dataclass
class EvalExample:
    id: str
    prompt: str
    reference: str


def _prompt(instruction: str, inp: str | None) -> str:
    return f"{instruction}\n\n{inp}" if inp else instruction


def _from_records(records: Iterable[tuple[str, dict[str, Any]]], fmt: str) -> list[EvalExample]:
    out = []
    for where, rec in records:
        try:
            if fmt == "pairs":
                out.append(EvalExample(str(rec.get("id", where)), _prompt(rec["instruction"], rec.get("input")), rec["output"]))
            elif fmt == "self_instruct":
                inst = rec["instances"][0]
                out.append(EvalExample(str(rec.get("id", where)), _prompt(rec["instruction"], inst.get("input")), inst["output"]))
            else:
                raise ValueError(f"eval.format must be 'pairs' or 'self_instruct', got {fmt!r}")
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{where}: eval record lacks {err} for format '{fmt}'") from None
    return out


def load_suite(ev: Any) -> list[EvalExample]:
    """The examples of an `eval` config node: a local JSONL, the bundled sample, or a hub dataset."""
    if ev.path or ev.format == "pairs":
        path = Path(ev.path) if ev.path else Path(str(importlib.resources.files("gpt4all.data") / "sample_eval.jsonl"))
        if not path.is_file():
            raise FileNotFoundError(f"eval suite '{ev.name}': {path} not found")
        examples = _from_records(((f"{path}:{n}", r) for n, r in iter_jsonl(path)), ev.format)
    else:
        import datasets

        ds = datasets.load_dataset(ev.hf_dataset, ev.hf_config, split=ev.hf_split)
        examples = _from_records(((f"{ev.hf_dataset}[{i}]", r) for i, r in enumerate(ds)), ev.format)
    return examples[: ev.limit] if ev.limit else examples
