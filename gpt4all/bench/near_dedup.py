"""`gpt4all-bench near_dedup [--rows N]`: the near_dedup filter beside `datasketch.MinHashLSH` on planted
near-duplicates: recall, precision and time at the same threshold.

Rows are real P3 and GPTeacher-codegen pairs from `--data-dir`, each perturbed (15 % of the words of longer
texts replaced, as `gpt4all-bench curate`), plus `--planted` share of near-duplicates: copies of an earlier row
with 0-6 % of their words replaced (at least one), so their true Jaccard similarity to the source spans
about 0.5 to 1.
Truth is the exact Jaccard of the word 5-gram shingle sets (the shingles both methods see):
- recall: planted rows whose exact Jaccard with their source is >= the threshold, and that the method drops;
- precision: dropped rows whose exact Jaccard with the row they were matched to (near_dedup: the group's first
  row; datasketch: the best earlier candidate) or with their planted source is >= the threshold.
datasketch runs as its documentation shows for de-duplication (query, then insert the kept row), on the same
shingle sets (MinHash with the same permutations, `affine32`), once as is and once with each candidate
confirmed by estimated Jaccard (as near_dedup confirms). Time: signatures + index + decisions, one process;
the shingling floor (word and shingle hashes alone, which every method needs) is measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpt4all.bench.curate import _mutate
from gpt4all.core.jsonl import read_jsonl
from gpt4all.core.manifest import write_json
from gpt4all.curate.dedup import NearDedupFilter, shingle_hashes, word_hashes



def build(rows: int, planted: float, data_dir: Path, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts (prompt + newline + response) and, per row, the index of its planted source (-1: an original)."""
    rng = random.Random(seed)
    base = [(r["prompt"], r["response"]) for rel in ("p3_t0/p3_t0_sample.jsonl", "gpteacher/codegen.jsonl")
            for r in read_jsonl(data_dir / rel)]
    vocab = sorted({w for p, _ in base[:4000] for w in p.split() if w.isalpha()})
    texts: list[str] = []
    source = np.full(rows, -1, np.int64)
    for i in range(rows):
        if i > 100 and rng.random() < planted:
            j = rng.randrange(i)
            while source[j] != -1:  # copy an original
                j = rng.randrange(i)
            texts.append(_mutate(texts[j], vocab, rng, share=rng.uniform(0.0, 0.06)))
            source[i] = j
        else:
            p, r = rng.choice(base)
            texts.append(_mutate(p, vocab, rng) + "\n" + _mutate(r, vocab, rng))
    return texts, source


def shingle_sets(texts: list[str], ngram: int) -> list[np.ndarray]:
    sh, per_text = shingle_hashes(*word_hashes(texts), ngram)
    bounds = np.r_[0, np.cumsum(per_text)]
    return [np.unique(sh[bounds[i]:bounds[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def run_ours(texts: list[str], f: NearDedupFilter, batch: int = 4096) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    parts = [f.keys([{"prompt": x, "response": ""} for x in texts[i:i + batch]]) for i in range(0, len(texts), batch)]
    keys = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    dup_of = f.select(keys, np.ones(len(texts), bool))
    return dup_of, time.perf_counter() - t


def run_datasketch(sets: list[np.ndarray], f: NearDedupFilter, confirm: bool) -> tuple[np.ndarray, float]:
    """MinHashLSH at the same threshold and num_perm (its default weights), query-then-insert."""
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=f.threshold, num_perm=f.num_perm)
    perms = (f.a, f.b)
    sigs: dict[int, Any] = {}
    dup_of = np.full(len(sets), -1, np.int64)
    for i, s in enumerate(sets):
        m = MinHash(num_perm=f.num_perm, seed=f.seed, scheme="affine32", permutations=perms)
        m.update_batch([int(x).to_bytes(4, "little") for x in s])
        cands = lsh.query(m)
        if confirm:
            scored = [(m.jaccard(sigs[c]), c) for c in cands]
            cands = [c for j, c in sorted(scored, reverse=True) if j >= f.threshold]
        if cands:
            dup_of[i] = cands[0] if confirm else min(cands)
            continue
        lsh.insert(i, m)
        sigs[i] = m
    return dup_of, time.perf_counter() - t


def score(dup_of: np.ndarray, source: np.ndarray, sets: list[np.ndarray], truth_j: np.ndarray, threshold: float,
          best_match=None) -> dict[str, Any]:
    flagged = np.flatnonzero(dup_of >= 0)
    positives = np.flatnonzero((source >= 0) & (truth_j >= threshold))
    correct = 0
    for r in flagged:
        if source[r] >= 0 and truth_j[r] >= threshold:
            correct += 1
        elif jaccard(sets[r], sets[dup_of[r]]) >= threshold:
            correct += 1
    hit = np.isin(positives, flagged)
    planted = np.flatnonzero(source >= 0)
    return {"dropped": int(len(flagged)), "true_positives_in_truth": int(hit.sum()), "positives": int(len(positives)),
            "recall": round(float(hit.mean()) if len(positives) else float("nan"), 4),
            "precision": round(correct / len(flagged) if len(flagged) else float("nan"), 4),
            "recall_all_planted": round(float(np.isin(planted, flagged).mean()), 4)}


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")]
                break
    except OSError:
        pass
    return {"model": model, "flags": flags, "cpus": os.cpu_count()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench near_dedup", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--planted", type=float, default=0.05, help="share of rows that are planted near-duplicates")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--confirm-z", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                    help="near_dedup's confirm_z values to measure (standard errors below the threshold)")
    ap.add_argument("--data-dir", required=True, help="dir with p3_t0/p3_t0_sample.jsonl and gpteacher/codegen.jsonl")
    ap.add_argument("--out", default="outputs/bench/near_dedup.json")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    texts, source = build(args.rows, args.planted, Path(args.data_dir), args.seed)
    f = NearDedupFilter(threshold=args.threshold, fields=["prompt"])
    t = time.perf_counter()
    sets = shingle_sets(texts, f.ngram)
    floor_s = time.perf_counter() - t
    truth_j = np.array([jaccard(sets[i], sets[source[i]]) if source[i] >= 0 else np.nan for i in range(len(texts))])
    results = {}
    for z in args.confirm_z:
        fz = NearDedupFilter(threshold=args.threshold, fields=["prompt"], confirm_z=z)
        ours, s = run_ours(texts, fz)
        results[f"near_dedup_z{z:g}"] = {"seconds": round(s, 2), "confirm_z": z, "confirm_at": fz.confirm_at,
                                         **score(ours, source, sets, truth_j, args.threshold)}
    for confirm in (False, True):
        name = "datasketch_lsh" + ("_confirmed" if confirm else "")
        dup, s = run_datasketch(sets, f, confirm)
        results[name] = {"seconds": round(s, 2), **score(dup, source, sets, truth_j, args.threshold)}
    planted = source >= 0
    hist = np.histogram(truth_j[planted], bins=[0, 0.5, 0.7, 0.8, 0.9, 1.0001])[0].tolist()
    out = {"rows": args.rows, "planted": int(planted.sum()), "threshold": args.threshold, "num_perm": f.num_perm,
           "ngram": f.ngram, "near_dedup_bands": [f.bands, f.rows], "seed": args.seed,
           "planted_jaccard_histogram": {"bins": [0, 0.5, 0.7, 0.8, 0.9, 1.0], "counts": hist},
           "shingling_floor_s": round(floor_s, 2), "results": results,
           "machine": {**cpu_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                       "note": "shared 2-core machine: other people's light jobs may run beside it"}}
    write_json(Path(args.out), out)
    print(f"\nnear-dedup benchmark: {args.rows:,} rows, {int(planted.sum()):,} planted near-duplicates "
          f"({next(iter(results.values()))['positives']:,} with exact Jaccard >= {args.threshold}), "
          f"{out['machine']['model']} {' '.join(out['machine']['flags'])}, {os.cpu_count()} CPUs, "
          f"load {load_before[0]:.1f} -> {out['machine']['loadavg_after'][0]:.1f}")
    print(f"  shingling floor (word + shingle hashes, every method needs them): {floor_s:.1f} s")
    print(f"  {'method':<26}{'seconds':>9}{'dropped':>9}{'recall':>8}{'precision':>10}{'recall, all planted':>21}")
    for name, r in results.items():
        print(f"  {name:<26}{r['seconds']:>9.1f}{r['dropped']:>9,}{r['recall']:>8.3f}{r['precision']:>10.3f}"
              f"{r['recall_all_planted']:>21.3f}")
    print(f"  written: {args.out}")
    return 0
