"""Schemas of the curate stage's nodes: `curation` (a preset: filters, diversity rule, maps) and `curate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class EmbeddingKind(str, Enum):
    tfidf = "tfidf"
    model = "model"


class DiversityAction(str, Enum):
    drop = "drop"
    report = "report"


class TsneMethod(str, Enum):
    opentsne = "opentsne"
    sklearn = "sklearn"


@dataclass
class EmbeddingSchema:
    kind: EmbeddingKind = EmbeddingKind.tfidf
    dim: int = 64                 # TruncatedSVD components
    max_features: int = 20000     # TF-IDF vocabulary
    max_length: int = 256         # kind=model: tokens per text
    batch_size: int = 16          # kind=model


@dataclass
class DiversityThresholds:
    """null: the check is off. See gpt4all/curate/diversity.py for each measure."""

    distinct_2_min: float | None = None
    unique_response_share_min: float | None = None
    mean_similarity_max: float | None = None
    length_cv_min: float | None = None
    median_tokens_min: float | None = None
    top_prefix_share_max: float | None = None
    compression_ratio_max: float | None = None


@dataclass
class DiversitySchema:
    enabled: bool = True
    action: DiversityAction = DiversityAction.drop
    sample_size: int = 2000
    distinct_budget: int = 5000
    min_rows: int = 200
    min_failed: int = 2
    thresholds: DiversityThresholds = field(default_factory=DiversityThresholds)
    drop_sources: list[str] = field(default_factory=list)
    keep_sources: list[str] = field(default_factory=list)


@dataclass
class MapsSchema:
    enabled: bool = True
    max_points: int = 10000
    tsne: TsneMethod = TsneMethod.opentsne
    perplexity: float = 30.0
    iterations: int = 300         # optimisation steps after early exaggeration (which gets half as many)
    n_topics: int = 12
    top_keywords: int = 8
    homogeneous_similarity: float = 0.5
    min_cluster_size: int = 20
    html: bool = True


@dataclass
class CurationSchema:
    name: str = "???"
    # filter key -> `_target_` node (conf/curation/filter/*.yaml); instantiation names a bad key per filter
    filters: dict[str, Any] = field(default_factory=dict)
    # shorthand switches: false removes that filter (failed, empty, truncated, refusal, exact_dedup)
    drop_failed: bool = True
    drop_empty: bool = True
    drop_truncated: bool = True
    drop_refusals: bool = True
    dedup_exact: bool = True
    embedding: EmbeddingSchema = field(default_factory=EmbeddingSchema)
    diversity: DiversitySchema = field(default_factory=DiversitySchema)
    maps: MapsSchema = field(default_factory=MapsSchema)


@dataclass
class CurateSchema:
    input_dir: str | None = None  # a collect run dir; null: the latest one under paths.output_dir
    resume: str | None = None     # an interrupted curate run dir: reuse its finished steps (its work/ dir)
    shard_rows: int = 200000         # rows per checkpointed shard of the row-filter pass
    num_proc: int = 2                # processes for datasets.map and t-SNE
    batch_size: int = 1000           # rows per datasets.map batch
    keep_work: bool = False          # keep work/ (ingested Arrow data, shard results) after a finished run


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "curation": CurationSchema,
    "curate": CurateSchema,
}
