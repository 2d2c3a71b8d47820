"""Schema of `data.pairs` (config group data/pairs): prompt/response pairs a user brings to curate and train."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairFieldsSchema:
    prompt: str = "prompt"  # required columns
    response: str = "response"
    id: str | None = None  # null: ids made from the content
    source: str | None = None  # null: data.pairs.source (a constant), else the file or dataset name


@dataclass
class PairsSchema:
    path: str | None = None  # a .jsonl/.json, .parquet, .csv, .tsv file or a datasets dir (save_to_disk)
    dataset: str | None = None  # or a hub dataset id
    config: str | None = None  # the hub dataset's config name
    split: str = "train"  # hub datasets and DatasetDict dirs
    fields: PairFieldsSchema = field(default_factory=PairFieldsSchema)
    source: str | None = None  # the source name of every row when fields.source is null
    limit: int | None = None  # read at most this many rows
