"""Schemas of the collect stage's nodes: `teacher`, `collect` and the prompt sources under `data`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpt4all.core.schema.pairs import PairsSchema


@dataclass
class TeacherSchema:
    name: str = "???"
    model: str = "???"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this environment variable, never config
    system_prompt: str | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    concurrency: int = 8  # requests in flight
    requests_per_minute: int | None = None  # client-side rate limits (null: none)
    tokens_per_minute: int | None = None  # counted as estimated prompt tokens + max_tokens per request
    timeout_s: float = 60.0  # per request
    http_client: str = "aiohttp"  # the openai SDK's transport: aiohttp | httpx
    max_retries: int = 3  # retries after the first attempt (429, 5xx, connection errors, timeouts, bad JSON)
    backoff_initial_s: float = 1.0  # exponential backoff with jitter; a Retry-After header wins
    backoff_max_s: float = 60.0
    server: Any | None = None  # a `_target_` node that starts a local server (teacher=llamacpp_local)


@dataclass
class PriceSchema:
    input_per_1k: float = 0.0  # dollars per 1K prompt tokens
    output_per_1k: float = 0.0  # dollars per 1K completion tokens


@dataclass
class PricingSchema:
    batch_discount: float = 0.5  # the Batch API's price as a fraction of the online price
    models: dict[str, PriceSchema] = field(default_factory=dict)


@dataclass
class BatchSchema:
    completion_window: str = "24h"
    poll_interval_s: float = 30.0
    max_requests_per_file: int = 50_000  # the Batch API's limits per input file
    max_file_bytes: int = 200_000_000
    max_rounds: int = 3  # rounds of re-sending expired or retryable lines


@dataclass
class CollectSchema:
    mode: str = "online"  # online: chat requests | batch: the OpenAI Batch API
    dry_run: bool = False  # estimate tokens and cost, send nothing
    dedup_prompts: bool = True
    limit: int | None = None  # cap on the number of prompts sent, after mixing
    cache_dir: str = "???"  # the answer cache shared by re-runs
    retry_failed: bool = True  # re-send prompts that failed in an earlier run
    max_cost_usd: float | None = None  # stop sending once this much is spent (the rest fail: BudgetExceeded)
    expected_output_tokens: int | None = None  # dry-run tokens per answer; null: teacher.max_tokens (a bound)
    progress_every_s: float = 5.0  # how often the live ledger goes to ledger.json and the tracker
    progress: bool = True  # the tqdm bar
    claim_lease_s: float = 30.0  # a request claimed for sending is another collector's to take after this long silent
    pricing: PricingSchema = field(default_factory=PricingSchema)
    batch: BatchSchema = field(default_factory=BatchSchema)


@dataclass
class SourceSchema:
    # null in a node that only an experiment's override created (e.g. data.sources.sample.sample_size with
    # data/source=[jsonl]): not a selected source, the stage ignores it
    _target_: str | None = None
    name: str | None = None
    path: str | None = None
    dataset: str | None = None
    format: str = "field"  # field | oig | title_body
    prompt_field: str = "prompt"
    title_field: str | None = None
    source_field: str | None = None
    id_field: str | None = None
    config: str | None = None
    data_files: str | None = None
    split: str = "train"
    sample_size: int | None = None
    seed: int = 0
    on_error: str = "raise"  # raise | skip (malformed rows are counted)


@dataclass
class DataSchema:
    sources: dict[str, SourceSchema] = field(default_factory=dict)
    pairs: PairsSchema | None = None  # data/pairs: pairs brought to curate and train (no collect run)


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "teacher": TeacherSchema,
    "collect": CollectSchema,
    "data": DataSchema,
}
