"""Prompt/response pairs a user brings (config group data/pairs), read through a field mapping.

Where: a local `.jsonl` / `.json` (one object a line), `.parquet`, `.csv` or `.tsv` file, a `datasets` dir
saved with `save_to_disk`, or a hub dataset id with a split. Only the prompt and response fields are required:
a missing id is made from the content, the source comes from a mapped field, a constant or the file name.
A row without a mapped field stops the load naming the file, the key and the line (row for Parquet and
datasets); every row gets the columns of `PAIR_COLUMNS`, and the content digest (SHA-256 over the normalised
rows, in order) names exactly what was trained on in manifests, model cards and W&B.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt4all.core.jsonl import read_records

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("id", "prompt", "response", "source")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


class PairsError(ValueError):
    """A pairs dataset that cannot be read as configured; the message names the file (or dataset), key and line."""


@dataclass
class Pairs:
    """Normalised pairs as columns, with where they came from and their content digest."""

    name: str
    location: str
    columns: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in PAIR_COLUMNS})
    digest: str = ""
    rows: int = 0  # rows read (what the digest covers)
    ids_made: int = 0  # rows whose id was made from the content

    def __len__(self) -> int:
        return len(self.columns["prompt"])

    def info(self) -> dict[str, Any]:
        """What a manifest, a model card and a W&B artifact record about the data."""
        return {"name": self.name, "location": self.location, "rows": self.rows, "digest": self.digest,
                "ids_made": self.ids_made}

    def records(self) -> Iterator[dict[str, Any]]:
        """The pairs as collect-style records (finish_reason and error empty), for curate's ingest."""
        cols = self.columns
        for i in range(len(self)):
            yield {"id": cols["id"][i], "prompt": cols["prompt"][i], "source": cols["source"][i],
                   "response": cols["response"][i], "finish_reason": None, "error": None}

    def drop_empty(self) -> dict[str, int]:
        """Remove rows with an empty prompt or response (train reads pairs uncurated); the counts by reason."""
        cols = self.columns
        reasons = ["empty_prompt" if not p.strip() else "empty_response" if not r.strip() else ""
                   for p, r in zip(cols["prompt"], cols["response"])]
        keep = [i for i, r in enumerate(reasons) if not r]
        if len(keep) < len(reasons):
            self.columns = {c: [v[i] for i in keep] for c, v in cols.items()}
        return {r: reasons.count(r) for r in ("empty_prompt", "empty_response") if r in reasons}

    def to_dataset(self):
        """A `datasets.Dataset` with the columns of PAIR_COLUMNS (what train reads)."""
        import datasets

        return datasets.Dataset.from_dict(self.columns)


def _name(spec: Any) -> str:
    if spec.get("dataset"):
        return str(spec.dataset)
    return Path(str(spec.path)).name


def _local_rows(spec: Any, path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(where, row or error message) for a local file or datasets dir."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise PairsError(f"data.pairs.path={path}: not a dataset saved with save_to_disk ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise PairsError(f"data.pairs.path={path}: no split '{spec.split}' (has {', '.join(ds)}); "
                                 f"set data.pairs.split")
            ds = ds[spec.split]
        _check_columns(spec, ds.column_names, str(path))
        yield from ((f"{path}[{i}]", row) for i, row in enumerate(ds))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        _check_columns(spec, pq.read_schema(path).names, str(path))
        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                yield f"{path}: row {i}", row
                i += 1
    elif path.suffix in FILE_SUFFIXES:
        yield from ((f"{path}:{lineno}", rec) for lineno, rec in read_records(path))
    else:
        raise PairsError(f"data.pairs.path={path}: expected a {', '.join(FILE_SUFFIXES)} file or a datasets dir")


def _hub_rows(spec: Any) -> Iterator[tuple[str, dict[str, Any] | str]]:
    import datasets

    try:
        ds = datasets.load_dataset(str(spec.dataset), spec.get("config"), split=str(spec.split))
    except Exception as err:  # noqa: BLE001 - offline, missing or gated: one error naming the dataset
        raise PairsError(
            f"data.pairs.dataset={spec.dataset} (split {spec.split}): cannot be loaded here (offline, "
            f"HF_DATASETS_OFFLINE=1, misspelt or gated?): {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            f"Save a copy once (datasets' save_to_disk, or a JSONL/Parquet file) and pass data.pairs.path=..."
        ) from None
    _check_columns(spec, ds.column_names, f"{spec.dataset}[{spec.split}]")
    yield from ((f"{spec.dataset}[{spec.split}][{i}]", row) for i, row in enumerate(ds))


def _check_columns(spec: Any, columns: list[str], where: str) -> None:
    """Sources with a schema (Parquet, datasets): every mapped field is a column, checked before the first row."""
    for role, key in spec.fields.items():
        if key is not None and key not in columns:
            raise PairsError(f"{where}: no field '{key}' (data.pairs.fields.{role}); it has {', '.join(columns)}")


def _text(row: dict[str, Any], key: str, role: str, where: str) -> str:
    if key not in row:
        raise PairsError(f"{where}: missing field '{key}' (data.pairs.fields.{role}); "
                         f"fields: {', '.join(map(str, row)) or 'none'}")
    value = row[key]
    if value is None:
        return ""  # an empty prompt or response: curate's `empty` filter drops and counts it
    if not isinstance(value, str):
        raise PairsError(f"{where}: field '{key}' (data.pairs.fields.{role}) must be text, got {type(value).__name__}")
    return value


def load_pairs(spec: Any) -> Pairs:
    """Read a `data.pairs` node (path or dataset, split, fields, source, limit) into normalised pairs."""
    if not spec.get("path") and not spec.get("dataset"):
        raise PairsError("data.pairs needs a path (file or datasets dir) or a hub dataset id (data.pairs.dataset)")
    fields = spec.fields
    for role in ("prompt", "response"):
        if not fields.get(role):
            raise PairsError(f"data.pairs.fields.{role} is required (the column holding the {role})")
    name = _name(spec)
    if spec.get("path"):
        path = Path(str(spec.path)).expanduser()
        if not path.exists():
            raise PairsError(f"data.pairs.path={spec.path}: no such file or dir")
        location, rows = str(path.resolve()), _local_rows(spec, path)
    else:
        location, rows = f"hub:{spec.dataset}[{spec.split}]", _hub_rows(spec)
    source_const = str(spec.get("source") or Path(name).stem)
    pairs = Pairs(name=name, location=location)
    cols, digest = pairs.columns, hashlib.sha256()
    limit = spec.get("limit")
    for n, (where, row) in enumerate(rows):
        if limit is not None and n >= limit:
            break
        if isinstance(row, str):
            raise PairsError(f"{where}: {row}")
        prompt = _text(row, fields.prompt, "prompt", where)
        response = _text(row, fields.response, "response", where)
        source = _text(row, fields.source, "source", where) if fields.get("source") else ""
        pid = _text(row, fields.id, "id", where) if fields.get("id") else ""
        if not pid:
            pid = hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:16]
            pairs.ids_made += 1
        rec = {"id": str(pid), "prompt": prompt, "response": response, "source": source or source_const}
        for c in PAIR_COLUMNS:
            cols[c].append(rec[c])
        digest.update(json.dumps([rec[c] for c in PAIR_COLUMNS], ensure_ascii=False).encode() + b"\n")
    if not len(pairs):
        raise PairsError(f"{location}: no pairs to read")
    pairs.rows, pairs.digest = len(pairs), f"sha256:{digest.hexdigest()}"
    log.info("pairs %s: %d rows from %s (digest %s)", name, len(pairs), location, pairs.digest[:19])
    return pairs
