"""Evaluation suites (config group `eval`): instruction / input / reference-response examples.

Formats: `pairs` ({instruction, input?, output} lines; the bundled sample), `self_instruct` ({instruction,
instances: [{input, output}]}, the Self-Instruct human-eval file), `jsonl` (any JSONL; `eval.fields` maps
instruction / input / output to its field names, input may be null).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all.core.jsonl import iter_jsonl
from gpt4all.core.metrics import instruction_prompt

FORMATS = ("pairs", "self_instruct", "jsonl")


@dataclass
class EvalExample:
    id: str
    instruction: str
    input: str
    reference: str

    @property
    def prompt(self) -> str:
        """The user turn the `conditional` method puts in the model's template."""
        return instruction_prompt(self.instruction, self.input)

    def triple(self) -> tuple[str, str, str]:
        return self.instruction, self.input, self.reference


def _text(rec: dict[str, Any], key: str | None, where: str, optional: bool = False) -> str:
    if key is None or (optional and rec.get(key) is None):
        return ""
    value = rec[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")  # noqa: TRY004 (bad data, not a bad call)
    return value


def _from_records(records: Iterable[tuple[str, dict[str, Any]]], fmt: str, fields: Any = None) -> list[EvalExample]:
    if fmt not in FORMATS:
        raise ValueError(f"eval.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = []
    for where, rec in records:
        try:
            rid = str(rec.get("id", where))
            if fmt == "pairs":
                ex = EvalExample(rid, _text(rec, "instruction", where), _text(rec, "input", where, True),
                                 _text(rec, "output", where))
            elif fmt == "self_instruct":
                inst = rec["instances"][0]
                ex = EvalExample(rid, _text(rec, "instruction", where), _text(inst, "input", where, True),
                                 _text(inst, "output", where))
            else:
                f = fields or {}
                ex = EvalExample(str(rec.get(f.get("id") or "id", where)), _text(rec, f.get("instruction"), where),
                                 _text(rec, f.get("input"), where, True), _text(rec, f.get("output"), where))
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{where}: eval record lacks {err} for format '{fmt}'") from None
        out.append(ex)
    return out


def load_suite(ev: Any) -> list[EvalExample]:
    """The examples of an `eval` config node: a local JSONL, the bundled sample, or a hub dataset."""
    fields = ev.get("fields")
    if ev.format == "jsonl" and not ev.path:
        raise ValueError(f"eval suite '{ev.name}' (format jsonl) needs eval.path=FILE.jsonl")
    if ev.path or ev.format == "pairs":
        path = Path(ev.path) if ev.path else Path(str(importlib.resources.files("gpt4all.data") / "sample_eval.jsonl"))
        if not path.is_file():
            raise FileNotFoundError(f"eval suite '{ev.name}': {path} not found")
        examples = _from_records(((f"{path}:{n}", r) for n, r in iter_jsonl(path)), ev.format, fields)
    elif ev.hf_dataset:
        import datasets

        ds = datasets.load_dataset(ev.hf_dataset, ev.hf_config, split=ev.hf_split)
        examples = _from_records(((f"{ev.hf_dataset}[{i}]", r) for i, r in enumerate(ds)), ev.format, fields)
    else:
        raise ValueError(f"eval suite '{ev.name}': set eval.path (a local JSONL) or eval.hf_dataset")
    if not examples:
        raise ValueError(f"eval suite '{ev.name}' has no examples")
    return examples[: ev.limit] if ev.limit else examples
