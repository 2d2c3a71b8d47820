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
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("rows") == rows:
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
    recent: list[dict[str, Any]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in tqdm(range(rows), desc="bench: building pairs", unit="row", mininterval=2):
            u = rng.random()
            if recent and u < 0.03:  # exact duplicate of a recent row, with case and spacing changes
                src = dict(rng.choice(recent))
                src["prompt"], planted["exact_duplicates"] = "  " + src["prompt"].upper(), planted["exact_duplicates"] + 1
                src["response"] = (src["response"] or "").upper()
                rec = src
            elif recent and u < 0.06:  # near duplicate: a phrase appended
                src = dict(rng.choice(recent))
                src["response"], planted["near_duplicates"] = (src["response"] or "") + " Hope this helps.", \
                    planted["near_duplicates"] + 1
                rec = src
            else:
                source = "p3" if rng.random() < 0.45 else "gpteacher_codegen"
                p, r = rng.choice(base[source])
                rec = {"source": source, "prompt": _mutate(p, vocab, rng), "response": _mutate(r, vocab, rng),
                       "finish_reason": "stop", "error": None}
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
    info = {"rows": rows, "seed": seed, "planted": planted, "bytes": path.stat().st_size}
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


def run_stage(collect_dir: Path, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gpt4all.curate", f"curate.input_dir={collect_dir}", f"hydra.run.dir={run_dir}",
           "logger=csv", *extra]
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
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"curate failed ({proc.returncode}):\n{err[-3000:]}")
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 1), "peak_rss_gb": round(peak / 2**30, 3)}


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
    ap.add_argument("--out", default="outputs/bench/curate.json")
    ap.add_argument("--work", default="outputs/bench/curate", help="where the pairs and the run dir go")
    ap.add_argument("--data-dir", required=True, help="dir with p3_t0/, gpteacher/, ... (e.g. ../shared/data)")
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
    load_before = os.getloadavg()
    run_dir = work / f"run-{args.rows}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = run_stage(collect, run_dir, args.overrides)
    load_after = os.getloadavg()
    m = read_manifest(run_dir, "curate")
    filters = per_filter(collect / "responses.jsonl", args.overrides)
    result = {
        "rows": args.rows, "input": info, "build_s": round(build_s, 1), **res,
        "rows_per_s": round(args.rows / res["wall_s"]), "steps_s": m["metrics"]["seconds"],
        "funnel": m["counts"]["stages"], "dropped": m["counts"]["dropped"],
        "dropped_sources": m["counts"]["dropped_sources"], "per_filter": filters,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after},
        "goal": {"wall_s": 600, "peak_rss_gb": 4.0},
    }
    write_json(Path(args.out), result)
    print(f"\ncurate benchmark: {args.rows:,} rows ({info['bytes'] / 2**20:.0f} MiB), {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"  wall {res['wall_s']:.1f} s (goal < 600)   peak RSS {res['peak_rss_gb']:.2f} GB (goal < 4)   "
          f"{result['rows_per_s']:,} rows/s")
    print("  funnel: " + " -> ".join(f"{k} {v:,}" for k, v in result["funnel"].items())
          + f"   dropped sources: {', '.join(result['dropped_sources']) or 'none'}")
    print("  step seconds: " + ", ".join(f"{k} {v}" for k, v in result["steps_s"].items()))
    print(f"  {'filter':<14}{'rows/s (alone, 1 process)':>28}")
    for f in filters:
        print(f"  {f['filter']:<14}{f['rows_per_s']:>28,}")
    print(f"  written: {args.out}")
    return 0
