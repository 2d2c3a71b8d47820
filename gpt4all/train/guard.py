"""Keep evaluation data out of training: refuse rows whose prompt is a Self-Instruct evaluation instruction.

The Self-Instruct authors ask that their 252 user-oriented instructions never be trained on. Their text is not
shipped; `self_instruct_hashes.HASHES` holds a short SHA-256 of each normalized instruction and of each
instruction + input (computed by `instruction_hashes` from the public file), so the check works offline.
`train.eval_guard.path` adds the instructions of any other JSONL (same fields) to the refused set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from gpt4all.train.self_instruct_hashes import HASHES


class EvalLeakError(ValueError):
    """A training mixture contains evaluation prompts."""


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form: `instruction\\n\\ninput` and `instruction input` compare equal."""
    return " ".join(str(text).lower().split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalize(text).encode()).hexdigest()[:16]


def instruction_hashes(path: str | Path) -> set[str]:
    """Hashes of every instruction, and instruction + input, of an evaluation JSONL (Self-Instruct layout:
    `instruction` plus `instances: [{input, ...}]`, or a flat `input`)."""
    out: set[str] = set()
    with Path(path).open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                instruction = rec["instruction"]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: not an evaluation record with an 'instruction' ({err})") from None
            out.add(text_hash(instruction))
            inputs = [i.get("input") for i in rec.get("instances") or []] + [rec.get("input")]
            out.update(text_hash(f"{instruction} {inp}") for inp in inputs if inp)
    return out


def find_leaks(prompts: Sequence[str], hashes: Iterable[str]) -> list[int]:
    """Indices of the prompts whose normalized text is in `hashes`."""
    refused = set(hashes)
    return [i for i, p in enumerate(prompts) if text_hash(p) in refused]


def check_no_eval_leak(prompts: Sequence[str], ids: Sequence[str], where: str, extra_path: str | None = None) -> None:
    """Raise EvalLeakError naming the offending rows when any prompt is an evaluation instruction."""
    hashes = set(HASHES) | (instruction_hashes(extra_path) if extra_path else set())
    leaks = find_leaks(prompts, hashes)
    if leaks:
        shown = ", ".join(f"row {i} (id {ids[i]})" for i in leaks[:10])
        raise EvalLeakError(
            f"{where}: {len(leaks)} training row(s) are evaluation instructions (Self-Instruct user-oriented set"
            f"{' or ' + str(extra_path) if extra_path else ''}): {shown}{' ...' if len(leaks) > 10 else ''}. "
            "Remove them from the mixture (the eval set must never be trained on)."
        )
