"""The curation engine: streaming, batched, checkpointed, and every dropped row accounted for.

Steps, each checkpointed under a work dir so an interrupted run resumes where it stopped:
1. ingest   responses.jsonl -> an on-disk Arrow dataset (datasets.Dataset.from_generator: memory bounded)
2. rows     per shard of `shard_rows`: datasets.map(batched, num_proc) runs the row filters and computes the
            de-duplication keys of surviving rows; a finished shard is saved with a `.done` marker and skipped
            on resume
3. global   de-duplication filters over all rows at once (numpy), then the per-source diversity rule
Every row ends with `step` (-1 kept, else the index of the step that dropped it) and a reason; the funnel is
computed from these per-row records on disk, so counts always add up to the input, resumed or not.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import ConfigError, check_target_node
from gpt4all.core.jsonl import JsonlError, iter_jsonl
from gpt4all.core.manifest import write_json
from gpt4all.curate.dedup import GlobalFilter
from gpt4all.curate.filters import Filter

log = logging.getLogger(__name__)

RECORD_FIELDS = ("id", "prompt", "source", "response", "finish_reason", "error")
BASE = ("id", "source", "prompt", "response", "finish_reason", "error")
INGEST_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "source": datasets.Value("string"), "prompt": datasets.Value("string"),
    "response": datasets.Value("string"), "finish_reason": datasets.Value("string"),
    "error": datasets.Value("string"), "extra": datasets.Value("string"), "line": datasets.Value("int64"),
})
SOURCE_STEP = "source_rule"
SOURCE_REASON = "low_diversity_source"
# README shorthand switches: `curation.drop_truncated=false` removes that filter (same as ~curation.filters.X)
SWITCHES = {"drop_failed": "failed", "drop_empty": "empty", "drop_truncated": "truncated",
            "drop_refusals": "refusal", "dedup_exact": "exact_dedup"}


@dataclass
class Chain:
    """Row filters (run per row, in parallel) then global filters (run over all rows), in config order."""

    row: list[Filter] = field(default_factory=list)
    glob: list[GlobalFilter] = field(default_factory=list)

    @property
    def steps(self) -> list[str]:
        return [f.name for f in self.row] + [f.name for f in self.glob] + [SOURCE_STEP]


def build_chain(curation: DictConfig) -> Chain:
    """Instantiate `curation.filters` (key -> `_target_` node); an error names the filter's key."""
    chain = Chain()
    off = {key for switch, key in SWITCHES.items() if not curation.get(switch, True)}
    for key, node in (curation.filters or {}).items():
        if key in off:
            continue
        where = f"curation.filters.{key}"
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"{where} has no _target_: select it with 'curation/filter=[...,{key}]' "
                              f"or remove it with '~{where}'")
        check_target_node(node, where)
        try:
            flt = instantiate(node)
        except Exception as err:  # noqa: BLE001 - Hydra wraps the constructor's TypeError/ValueError
            cause = err.__cause__ or err
            raise ConfigError(f"invalid filter config at '{where}' ({node._target_}): {cause}") from None
        if not isinstance(flt, (Filter, GlobalFilter)):
            raise ConfigError(f"{where}: {node._target_} is not a Filter or GlobalFilter")
        flt.name = key
        (chain.glob if isinstance(flt, GlobalFilter) else chain.row).append(flt)
    return chain


# ---------------------------------------------------------------- 1. ingest

def _records(path: str) -> Iterator[dict[str, Any]]:
    for lineno, rec in iter_jsonl(path, required=RECORD_FIELDS):
        response = rec["response"]
        extra = {k: v for k, v in rec.items() if k not in BASE}
        if not isinstance(response, str):
            extra["response"] = response  # null or not text: kept verbatim for the quarantine file
        yield {
            "id": str(rec["id"]), "source": str(rec["source"] or "unknown"), "prompt": str(rec["prompt"] or ""),
            "response": response if isinstance(response, str) else "",
            "finish_reason": rec["finish_reason"], "error": json.dumps(rec["error"]) if rec["error"] else None,
            "extra": json.dumps(extra, ensure_ascii=False) if extra else None, "line": lineno,
        }


def ingest(responses: Path, work: Path) -> datasets.Dataset:
    """responses.jsonl -> work/ingest (Arrow on disk); skipped when already done."""
    out = work / "ingest"
    if (work / "ingest.done").exists():
        return datasets.load_from_disk(str(out))
    log.info("[curate] ingesting %s", responses)
    try:
        ds = datasets.Dataset.from_generator(_records, features=INGEST_FEATURES, gen_kwargs={"path": str(responses)},
                                             cache_dir=str(work / "cache"), writer_batch_size=5000)
    except Exception as err:  # noqa: BLE001 - datasets wraps the reader's error; surface the one naming file:line
        cause = err
        while cause is not None and not isinstance(cause, JsonlError):
            cause = cause.__cause__ or cause.__context__
        raise (cause or err) from None
    ds.save_to_disk(str(out))
    shutil.rmtree(work / "cache", ignore_errors=True)
    (work / "ingest.done").write_text(str(len(ds)))
    return datasets.load_from_disk(str(out))


# ---------------------------------------------------------------- 2. row filters, sharded

def _row(batch: dict[str, list], i: int) -> dict[str, Any]:
    row = {k: batch[k][i] for k in BASE}
    row["error"] = json.loads(row["error"]) if row["error"] else None
    return row


def _row_batch(batch: dict[str, list], chain: Chain) -> dict[str, Any]:
    """datasets.map body: first failing row filter per row, then global keys of surviving rows."""
    n = len(batch["id"])
    step = np.full(n, -1, np.int16)
    reason = [""] * n
    alive_rows = []
    for i in range(n):
        row = _row(batch, i)
        for k, f in enumerate(chain.row):
            verdict = f.filter(row)
            if verdict is not True:
                step[i], reason[i] = k, verdict[1] if isinstance(verdict, tuple) else f.name
                break
        else:
            alive_rows.append(row)
    out: dict[str, Any] = {"step": step, "reason": reason}
    alive = step == -1
    for g in chain.glob:
        full = g.empty_keys(n)
        if alive_rows:
            for key, values in g.keys(alive_rows).items():
                full[key][alive] = values
        out.update({f"{g.name}.{k}": v for k, v in full.items()})
    return out


def _features(chain: Chain) -> datasets.Features:
    feats = {"step": datasets.Value("int16"), "reason": datasets.Value("string")}
    for g in chain.glob:
        for key, arr in g.empty_keys(1).items():
            value = datasets.Value(str(arr.dtype))
            feats[f"{g.name}.{key}"] = datasets.Sequence(value, length=arr.shape[1]) if arr.ndim == 2 else value
    return datasets.Features(feats)


def row_pass(ds: datasets.Dataset, chain: Chain, work: Path, shard_rows: int, num_proc: int,
             batch_size: int) -> datasets.Dataset:
    """Run the row filters shard by shard; returns the per-row results aligned with `ds`."""
    n_shards = max(1, -(-len(ds) // shard_rows))
    parts = []
    for s in range(n_shards):
        out = work / "rows" / f"{s:05d}"
        done = out.with_suffix(".done")
        if not done.exists():
            lo, hi = s * shard_rows, min(len(ds), (s + 1) * shard_rows)
            shard = ds.select(range(lo, hi))
            procs = num_proc if num_proc > 1 and len(shard) >= 4 * batch_size else None
            res = shard.map(_row_batch, batched=True, batch_size=batch_size, num_proc=procs,
                            fn_kwargs={"chain": chain}, remove_columns=ds.column_names, features=_features(chain),
                            cache_file_name=str(work / "cache" / f"rows-{s:05d}.arrow"),
                            desc=f"curate: row filters, shard {s + 1}/{n_shards}", load_from_cache_file=False)
            res.save_to_disk(str(out))
            shutil.rmtree(work / "cache", ignore_errors=True)
            done.write_text(json.dumps({"rows": hi - lo, "kept": int(np.sum(np.asarray(res["step"]) == -1))}))
        parts.append(datasets.load_from_disk(str(out)))
    return datasets.concatenate_datasets(parts)


# ---------------------------------------------------------------- 3. global filters

def column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """A numeric column as numpy; fixed-size list columns come back 2-D."""
    col = ds.data.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


@dataclass
class Verdicts:
    """Per row: the step that dropped it (-1: kept), its reason code, and the row it duplicates (-1: none)."""

    step: np.ndarray
    reason: np.ndarray
    reasons: list[str]
    dup_of: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, step=self.step, reason=self.reason, dup_of=self.dup_of, reasons=np.array(self.reasons, object))

    @classmethod
    def load(cls, path: Path) -> Verdicts:
        z = np.load(path, allow_pickle=True)
        return cls(z["step"], z["reason"], list(z["reasons"]), z["dup_of"])

    def drop(self, mask: np.ndarray, step: int, reason: str, dup_of: np.ndarray | None = None) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.step[mask] = step
        self.reason[mask] = self.reasons.index(reason)
        if dup_of is not None:
            self.dup_of[mask] = dup_of[mask]


def global_pass(rows: datasets.Dataset, chain: Chain, work: Path) -> Verdicts:
    path = work / "global.npz"
    if path.exists():
        return Verdicts.load(path)
    enc = pc.dictionary_encode(rows.data.column("reason").combine_chunks())
    v = Verdicts(column(rows, "step").astype(np.int16), enc.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                 [str(r) for r in enc.dictionary.to_pylist()], np.full(len(rows), -1, np.int64))
    for k, g in enumerate(chain.glob, start=len(chain.row)):
        log.info("[curate] %s over %d rows", g.name, int((v.step == -1).sum()))
        keys = {c.split(".", 1)[1]: column(rows, c) for c in rows.column_names if c.startswith(f"{g.name}.")}
        dup_of = g.select(keys, v.step == -1)
        v.drop(dup_of >= 0, k, g.reason, dup_of)
        del keys
    v.save(path)
    return v


def checkpoint_guard(work: Path, fingerprint: dict[str, Any]) -> None:
    """A work dir resumes only with the same input and curation config; otherwise say what differs."""
    path = work / "checkpoint.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            raise ConfigError(f"cannot resume {work}: {', '.join(diff)} differ from the checkpointed run "
                              f"(start a fresh run, or restore the original settings)")
    else:
        write_json(path, fingerprint)


def file_digest(path: Path, edge: int = 1 << 20) -> str:
    """Size plus a hash of the first and last MiB: cheap, and changes when the collect run is re-written."""
    import xxhash

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(edge)
        f.seek(max(0, size - edge))
        tail = f.read(edge)
    return f"{size}:{xxhash.xxh3_64_hexdigest(head + tail)}"


def curation_fingerprint(curation: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(curation, resolve=True)
    data.pop("maps", None)
    return data
