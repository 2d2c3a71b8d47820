"""Near-duplicate detection by gpt4all-lab's NearDedupFilter and by datatrove's MinHash pipeline on one JSONL of
{"text"} rows, each run alone in its own process (`python -m gpt4all.bench._dedup_peer ours|datatrove IN OUT
[CONFIRM_Z]`, the last for `ours` only) so the benchmark can sample its peak RSS. OUT gets a JSON {"seconds",
"duplicates": row indices flagged as duplicates, "clusters": [[rows], ...]}. Both use the same shingles (lower-cased
[0-9a-z_] and non-ASCII word runs, word 5-grams), the same number of permutations and the same LSH bands x rows as
the filter's config; datatrove has no Jaccard confirmation of bucket matches (it clusters every bucket collision).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

from gpt4all.curate.dedup import NearDedupFilter

CHUNK = 2000
WORDS = re.compile(r"[0-9a-z_\u0080-\U0010ffff]+")


def near_dedup_filter(confirm_z: float | None = None) -> NearDedupFilter:
    """The filter as conf/curation/filter/near_dedup.yaml configures it (one text field; `confirm_z` if given)."""
    from omegaconf import OmegaConf

    from gpt4all.core.config import conf_dir

    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "curation" / "filter" / "near_dedup.yaml"))
    cfg.pop("_target_")
    cfg["fields"] = ["text"]
    if confirm_z is not None:
        cfg["confirm_z"] = confirm_z
    return NearDedupFilter(**cfg)


def clusters_from_dup_of(dup_of: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(dup_of >= 0).tolist():
        groups.setdefault(int(dup_of[i]), [int(dup_of[i])]).append(i)
    return list(groups.values())


def run_ours(path: Path, confirm_z: float | None = None) -> tuple[list[int], list[list[int]]]:
    f = near_dedup_filter(confirm_z)
    parts, batch = [], []
    with path.open() as fh:
        for line in fh:
            batch.append(json.loads(line))
            if len(batch) == CHUNK:
                parts.append(f.keys(batch))
                batch = []
    if batch:
        parts.append(f.keys(batch))
    keys = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    dup_of = f.select(keys, np.ones(len(keys["n"]), bool))
    return np.flatnonzero(dup_of >= 0).tolist(), clusters_from_dup_of(dup_of)


def run_datatrove(path: Path) -> tuple[list[int], list[list[int]]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Words(WordTokenizer):  # the filter's word definition (gpt4all.curate.dedup.word_hashes)
        def word_tokenize(self, text: str) -> list[str]:
            return WORDS.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    f = near_dedup_filter()
    cfg = MinhashConfig(n_grams=f.ngram, num_buckets=f.bands, hashes_per_bucket=f.rows, seed=f.seed,
                        hash_config=HashConfig(precision=64),
                        norm_config=TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=False,
                                                   norm_unicode_diacritics=False, norm_numbers=False))
    with tempfile.TemporaryDirectory() as tmp:
        sigs, buckets, clusters = (f"{tmp}/{d}" for d in ("sigs", "buckets", "clusters"))
        reader = JsonlReader(str(path.parent), glob_pattern=path.name, id_key="id")
        signature = MinhashDedupSignature(sigs, config=cfg, language=Words())
        # datatrove hands str to xxhash, which xxhash >= 4 refuses; encode first, as xxhash 3 did inside
        signature._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode())
        for steps, tasks in (([reader, signature], 1), ([MinhashDedupBuckets(sigs, buckets, config=cfg)], f.bands),
                             ([MinhashDedupCluster(buckets, clusters, config=cfg, save_cluster_id=True)], 1)):
            # one worker: the buckets stage's tasks (one per band, as datatrove requires) run one after another
            LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=1, logging_dir=f"{tmp}/logs/{steps[-1].name}",
                                  skip_completed=False).run()
        removed = np.fromfile(f"{clusters}/000000.remove", dtype=np.uint32).tolist()
        ids = Path(f"{clusters}/000000.clusters")
        groups: dict[int, list[int]] = {}
        if ids.exists():
            for doc, cid in np.fromfile(ids, dtype=np.uint32).reshape(-1, 2).tolist():
                groups.setdefault(cid, []).append(doc)
    return sorted(removed), list(groups.values())


def main(argv: list[str]) -> int:
    which, src, out, *confirm_z = argv
    start = time.perf_counter()
    if which == "ours":
        dups, clusters = run_ours(Path(src), *map(float, confirm_z))
    else:
        dups, clusters = run_datatrove(Path(src))
    Path(out).write_text(json.dumps({"seconds": time.perf_counter() - start, "duplicates": dups,
                                     "clusters": clusters}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
