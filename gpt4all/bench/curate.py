"""`gpt4all-bench curate [--rows N]`: curate N synthetic pairs built from a data dir (`--data-dir`, e.g. the project's shared data) with the full preset.

The pairs are real P3 and GPTeacher-codegen rows, perturbed (about 15 % of the words of longer texts replaced)
so most are distinct, plus planted exact and near duplicates and bad rows (failed, empty, truncated, refusals,
mojibake, loops, prompt echoes, open code fences). The stage runs as a user runs it (`python -m
gpt4all.curate`, in a subprocess); the benchmark samples the RSS of the whole process tree, prints wall
time, peak RSS, the stage's step timings and rows/s per filter (each filter alone, one process), and writes
JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpt4all.core.cpu import describe
from gpt4all.core.manifest import read_manifest, write_json, write_manifest

BAD = [  # (share of rows, how to spoil a row)
    (0.010, lambda r, rng: r.update(error={"type": "APITimeoutError", "status": None, "message": "timeout"},
                                    response=None, finish_reason=None)),
    (0.010, lambda r, rng: r.update(response="  ")),
    (0.010, lambda r, rng: r.update(finish_reason="length")),
    (0.005, lambda r, rng: r.update(response="As an AI language model, I cannot help with that. " + r["response"])),
    (0.005, lambda r, rng: r.update(response=r["response"] + " caf\u00c3\u00a9")),
    (0.003, lambda r, rng: r.update(response="I think so. " * 40)),
    (0.002, lambda r, rng: r.update(response=r["prompt"])),
    (0.005, lambda r, rng: r.update(response="```python\n" + r["response"])),
]


def _mutate(text: str, vocab: list[str], rng: random.Random, share: float = 0.15) -> str:
    words = text.split(" ")
    if len(words) < 8:
        return text
    for _ in range(max(1, int(len(words) * share))):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def build(path: Path, rows: int, data_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Write `rows` collect records to path (reused when it exists with the same size and seed)."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("rows") == rows \
            and "near_pairs" in json.loads(meta.read_text()):
        return json.loads(meta.read_text())
    from tqdm import tqdm

    rng = random.Random(seed)
    base = {"p3": [], "gpteacher_codegen": []}
    for rel in ("p3_t0/p3_t0_sample.jsonl", "gpteacher/codegen.jsonl"):
        with (data_dir / rel).open() as f:
            for line in f:
                r = json.loads(line)
                base[r["source"]].append((r["prompt"], r["response"]))
    vocab = sorted({w for rs in base.values() for p, _ in rs[:2000] for w in p.split() if w.isalpha()})
    planted = {"exact_duplicates": 0, "near_duplicates": 0, "bad_rows": 0}
    pairs: dict[str, list[tuple[int, int]]] = {"exact_pairs": [], "near_pairs": []}  # (planted row, its source row)
    recent: list[dict[str, Any]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in tqdm(range(rows), desc="bench: building pairs", unit="row", mininterval=2):
            u = rng.random()
            if recent and u < 0.03:  # exact duplicate of a recent row, with case and spacing changes
                src = dict(rng.choice(recent))
                src["prompt"], planted["exact_duplicates"] = "  " + src["prompt"].upper(), planted["exact_duplicates"] + 1
                src["response"] = (src["response"] or "").upper()
                pairs["exact_pairs"].append((i, src["_row"]))
                rec = src
            elif recent and u < 0.06:  # near duplicate: a phrase appended
                src = dict(rng.choice(recent))
                src["response"], planted["near_duplicates"] = (src["response"] or "") + " Hope this helps.", \
                    planted["near_duplicates"] + 1
                pairs["near_pairs"].append((i, src["_row"]))
                rec = src
            else:
                source = "p3" if rng.random() < 0.45 else "gpteacher_codegen"
                p, r = rng.choice(base[source])
                rec = {"source": source, "prompt": _mutate(p, vocab, rng), "response": _mutate(r, vocab, rng),
                       "finish_reason": "stop", "error": None, "_row": i}
                v = rng.random()
                for share, spoil in BAD:
                    if v < share:
                        spoil(rec, rng)
                        planted["bad_rows"] += 1
                        break
                    v -= share
                recent = (recent + [rec])[-1000:]
            out = {"id": f"b{i}", "source": rec["source"], "prompt": rec["prompt"], "model": "bench",
                   "response": rec["response"], "finish_reason": rec["finish_reason"], "error": rec["error"],
                   "usage": None, "latency_s": 0.0}
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    info = {"rows": rows, "seed": seed, "planted": planted, "bytes": path.stat().st_size, **pairs}
    meta.write_text(json.dumps(info))
    return info


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampled(cmd: list[str]) -> tuple[float, int]:
    """Run cmd from the repo root, sampling the RSS of its process tree; (wall seconds, peak RSS bytes)."""
    peak = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0, peak


def run_stage(collect_dir: Path, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gpt4all.curate", f"curate.input_dir={collect_dir}", f"hydra.run.dir={run_dir}",
           "logger=csv", *extra]
    wall, peak = run_sampled(cmd)
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 1), "peak_rss_gb": round(peak / 2**30, 3)}


def _labels(n: int, clusters: list[list[int]]) -> np.ndarray:
    label = np.arange(n)
    for c in clusters:
        label[c] = min(c)
    return label


def near_threshold() -> float:
    from omegaconf import OmegaConf

    from gpt4all.core.config import conf_dir

    return float(OmegaConf.load(conf_dir() / "curation" / "filter" / "near_dedup.yaml").threshold)


def planted_jaccard(texts: Path, pairs: list[tuple[int, int]], n: int) -> list[float]:
    """Exact Jaccard similarity of the word 5-gram shingle sets (the filter's shingles) of each planted pair."""
    from gpt4all.curate.dedup import shingle_hashes, word_hashes

    wanted = {i for p in pairs for i in p}
    rows: dict[int, str] = {}
    with texts.open() as f:
        for i, line in enumerate(f):
            if i in wanted:
                rows[i] = json.loads(line)["text"]
    order = sorted(rows)
    sh, per_text = shingle_hashes(*word_hashes([rows[i] for i in order]), 5)
    ends = np.cumsum(per_text)
    sets = {i: set(sh[e - k:e].tolist()) for i, e, k in zip(order, ends, per_text)}
    return [len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b])) for a, b in pairs]


# the filter as configured; at confirm_z=2 (pairs confirmed 2 standard errors below the threshold: about
# datatrove's recall, which clusters every bucket collision unconfirmed); datatrove
DEDUP_SIDES = {"ours": ["ours"], "ours_z2": ["ours", "2"], "datatrove": ["datatrove"]}


def compare_dedup(responses: Path, info: dict[str, Any], n: int, work: Path) -> dict[str, Any]:
    """gpt4all-lab's near-dedup vs datatrove's MinHash pipeline on the first n rows (prompt + response, as the
    filter reads them), each alone in a subprocess: time, peak RSS, the duplicates each flags, how far their
    clusters agree, and the recall of the planted near (and exact) duplicates."""
    texts = work / f"dedup-texts-{n}.jsonl"
    with responses.open() as src, texts.open("w") as out:
        for i, line in enumerate(src):
            if i == n:
                break
            r = json.loads(line)
            out.write(json.dumps({"id": str(i), "text": f"{r.get('prompt') or ''}\n{r.get('response') or ''}"}) + "\n")
    res: dict[str, Any] = {"rows": n}
    near = [(a, b) for a, b in info["near_pairs"] if a < n and b < n]
    above = np.array(planted_jaccard(texts, near, n)) >= near_threshold()
    res["planted_near_pairs_at_threshold"] = int(above.sum())
    hits: dict[str, np.ndarray] = {}
    for side, cmd in DEDUP_SIDES.items():
        result = work / f"dedup-{side}-{n}.json"
        wall, peak = run_sampled([sys.executable, "-m", "gpt4all.bench._dedup_peer", cmd[0], str(texts), str(result),
                                  *cmd[1:]])
        found = json.loads(result.read_text())
        res[side] = {"wall_s": round(wall, 1), "dedup_s": round(found["seconds"], 1),
                     "peak_rss_gb": round(peak / 2**30, 3), "duplicates": len(found["duplicates"]),
                     "label": _labels(n, found["clusters"])}
        for kind in ("near_pairs", "exact_pairs"):
            planted = [(a, b) for a, b in info[kind] if a < n and b < n]
            hit = sum(res[side]["label"][a] == res[side]["label"][b] for a, b in planted)
            res[side][f"recall_{kind}"] = hit / max(1, len(planted))
            res[f"planted_{kind}"] = len(planted)
        hits[side] = np.array([res[side]["label"][a] == res[side]["label"][b] for (a, b), ok in zip(near, above)
                               if ok], bool)
        res[side]["recall_near_pairs_at_threshold"] = float(hits[side].mean()) if len(hits[side]) else 1.0
        planted_rows = {a for a, _ in info["near_pairs"] + info["exact_pairs"]}
        flagged = np.flatnonzero(res[side]["label"] != np.arange(n))
        res[side]["flagged_not_planted"] = int(sum(int(i) not in planted_rows for i in flagged))
    ours, theirs = res["ours"].pop("label"), res["datatrove"].pop("label")
    flagged_o, flagged_t = ours != np.arange(n), theirs != np.arange(n)
    both = flagged_o & flagged_t
    res["agreement"] = {
        "flagged_jaccard": int(both.sum()) / max(1, int((flagged_o | flagged_t).sum())),
        "ours_only": int((flagged_o & ~flagged_t).sum()), "datatrove_only": int((flagged_t & ~flagged_o).sum()),
        # a flagged row and its cluster's first row: does the other tool put them in one cluster too?
        "our_pairs_in_datatrove": float((theirs[flagged_o] == theirs[ours[flagged_o]]).mean()) if flagged_o.any() else 1.0,
        "datatrove_pairs_in_ours": float((ours[flagged_t] == ours[theirs[flagged_t]]).mean()) if flagged_t.any() else 1.0}
    for side in DEDUP_SIDES:
        res[side].pop("label", None)
        if side != "datatrove":
            res[side]["speedup"] = res["datatrove"]["wall_s"] / res[side]["wall_s"]
            res[side]["recall_vs_datatrove"] = recall_difference(hits[side], hits["datatrove"])
    res["speedup"] = res["ours"]["speedup"]
    return res


def recall_difference(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Paired comparison of two methods' hits on the same planted pairs: the pairs only one finds, and the exact
    McNemar test (two-sided binomial on the discordant pairs) of equal recall."""
    from scipy.stats import binomtest

    only_ours, only_theirs = int((ours & ~theirs).sum()), int((theirs & ~ours).sum())
    p = binomtest(only_ours, only_ours + only_theirs).pvalue if only_ours + only_theirs else 1.0
    return {"only_ours": only_ours, "only_datatrove": only_theirs,
            "difference": (only_ours - only_theirs) / max(1, len(ours)), "mcnemar_p": float(p)}


def per_filter(responses: Path, overrides: list[str], n: int = 20000) -> list[dict[str, Any]]:
    """rows/s of each filter of the preset, alone, in this process, on the first n rows."""
    import numpy as np
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    from gpt4all.core.config import CONF_PACKAGE, validate
    from gpt4all.core.jsonl import iter_jsonl
    from gpt4all.curate.engine import build_chain

    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose("curate", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    chain = build_chain(validate(cfg).curation)
    rows = []
    for _, r in iter_jsonl(responses):
        rows.append(r)
        if len(rows) >= n:
            break
    out = []
    for f in chain.row:
        t = time.perf_counter()
        for r in rows:
            f.filter(r)
        out.append({"filter": f.name, "rows_per_s": round(len(rows) / (time.perf_counter() - t))})
    for g in chain.glob:
        t = time.perf_counter()
        parts = [g.keys(rows[i:i + 1000]) for i in range(0, len(rows), 1000)]
        keys = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        g.select(keys, np.ones(len(rows), bool))
        out.append({"filter": g.name, "rows_per_s": round(len(rows) / (time.perf_counter() - t))})
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench curate", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--peer-rows", type=int, default=0, help="rows for the datatrove comparison (0: --rows)")
    ap.add_argument("--peer", choices=["with", "without", "only"], default="with",
                    help="the datatrove MinHash comparison beside the stage run, not at all, or alone")
    ap.add_argument("--out", default="outputs/bench/curate.json")
    ap.add_argument("--work", default="outputs/bench/curate", help="where the pairs and the run dir go")
    ap.add_argument("--data-dir", required=True, help="dir with p3_t0/, gpteacher/, ... JSONL sources")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for gpt4all-curate")
    args = ap.parse_args(argv)

    work = Path(args.work).resolve()
    collect = work / f"collect-{args.rows}"
    t = time.perf_counter()
    info = build(collect / "responses.jsonl", args.rows, Path(args.data_dir), args.seed)
    write_manifest(collect, "collect", "bench", inputs={"bench": "gpt4all-bench curate"},
                   outputs={"responses": collect / "responses.jsonl"})
    build_s = time.perf_counter() - t
    machine = describe()
    result: dict[str, Any] = {"rows": args.rows, "argv": argv, "build_s": round(build_s, 1), "machine": machine,
                              "input": {k: v for k, v in info.items() if not k.endswith("_pairs")}}
    print(f"\ncurate benchmark: {args.rows:,} rows ({info['bytes'] / 2**20:.0f} MiB); {machine['cpu']}, "
          f"{machine['cpus']} CPUs, load average {machine['loadavg'][0]:.1f} before")
    if args.peer != "only":
        result.update(stage_run(collect, work, args))
    if args.peer != "without":
        try:
            import datatrove  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any import failure skips the peer, the rest still ran
            result["peer_skipped"] = f"datatrove does not import ({type(e).__name__}: {e}); pip install -e \".[bench]\""
            print(f"  skipping datatrove: {result['peer_skipped']}")
        else:
            result["dedup_vs_datatrove"] = d = compare_dedup(collect / "responses.jsonl", info,
                                                              args.peer_rows or args.rows, work)
            print(f"  near-dedup vs datatrove MinHash on {d['rows']:,} rows (same word 5-grams, permutations, "
                  f"bands x rows; one process each; datatrove stops at its clusters):")
            print(f"  {'tool':<12}{'wall s':>8}{'peak RSS GB':>13}{'flagged':>9}{'not planted':>13}{'near recall':>13}"
                  f"{'(J >= thr)':>12}{'exact recall':>14}")
            for side in DEDUP_SIDES:
                r = d[side]
                print(f"  {side:<12}{r['wall_s']:>8.1f}{r['peak_rss_gb']:>13.2f}{r['duplicates']:>9,}"
                      f"{r['flagged_not_planted']:>13,}{r['recall_near_pairs']:>13.1%}"
                      f"{r['recall_near_pairs_at_threshold']:>12.1%}{r['recall_exact_pairs']:>14.1%}")
            print(f"  planted near duplicates {d['planted_near_pairs']:,}, of which "
                  f"{d['planted_near_pairs_at_threshold']:,} have shingle Jaccard >= the threshold; of those,")
            for side in DEDUP_SIDES:
                if side != "datatrove":
                    r = d[side]["recall_vs_datatrove"]
                    print(f"    {side} finds {r['only_ours']} that datatrove misses and misses {r['only_datatrove']} "
                          f"it finds: recall difference {r['difference']:+.2%} (McNemar p = {r['mcnemar_p']:.2g})")
            a = d["agreement"]
            print(f"  speed-up x{d['ours']['speedup']:.2f}, at confirm_z=2 x{d['ours_z2']['speedup']:.2f} (goal >= 2); "
                  f"flagged rows Jaccard {a['flagged_jaccard']:.3f} "
                  f"(ours only {a['ours_only']:,}, datatrove only {a['datatrove_only']:,}); our pairs clustered "
                  f"by datatrove {a['our_pairs_in_datatrove']:.1%}, theirs by ours {a['datatrove_pairs_in_ours']:.1%}")
    result["loadavg_after"] = os.getloadavg()
    write_json(Path(args.out), result)
    print(f"  written: {args.out}")
    return 0


def stage_run(collect: Path, work: Path, args) -> dict[str, Any]:
    """The whole curate stage as a user runs it, and each filter alone."""
    run_dir = work / f"run-{args.rows}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = run_stage(collect, run_dir, args.overrides)
    m = read_manifest(run_dir, "curate")
    filters = per_filter(collect / "responses.jsonl", args.overrides)
    out = {**res, "rows_per_s": round(args.rows / res["wall_s"]), "steps_s": m["metrics"]["seconds"],
           "funnel": m["counts"]["stages"], "dropped": m["counts"]["dropped"],
           "dropped_sources": m["counts"]["dropped_sources"], "per_filter": filters,
           "goal": {"wall_s": 600, "peak_rss_gb": 4.0}}
    print(f"  wall {res['wall_s']:.1f} s (goal < 600)   peak RSS {res['peak_rss_gb']:.2f} GB (goal < 4)   "
          f"{out['rows_per_s']:,} rows/s")
    print("  funnel: " + " -> ".join(f"{k} {v:,}" for k, v in out["funnel"].items())
          + f"   dropped sources: {', '.join(out['dropped_sources']) or 'none'}")
    print("  step seconds: " + ", ".join(f"{k} {v}" for k, v in out["steps_s"].items()))
    print(f"  {'filter':<14}{'rows/s (alone, 1 process)':>28}")
    for f in filters:
        print(f"  {f['filter']:<14}{f['rows_per_s']:>28,}")
    return out
