"""`gpt4all-bench collect`: collector throughput against a local endpoint with fixed latency and no capacity limit.

Starts gpt4all.collect.testing_server in its own process (latency --latency, no faults), then runs the real
online collector (AsyncOpenAI, limiter-free, retries on, every answer committed to a fresh SQLite cache) at
each concurrency, beside the practical limit: a raw aiohttp client (no SDK, retries or cache; `raw_aiohttp`) at
the same concurrency and request count, in the same run, back to back, --repeats times (alternating which runs
first). Prints the median requests/s, the share of the endpoint capacity (concurrency / latency) and the share of
the raw client's rate (medians of the per-repeat ratios, 95 % bootstrap intervals); writes JSON to --out. A
sequential client (the synchronous openai SDK, one request at a time) stays as a labelled aside.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
from omegaconf import OmegaConf

from gpt4all.collect.cache import AnswerCache
from gpt4all.collect.client import Collector, make_client
from gpt4all.collect.cost import Ledger, Price
from gpt4all.collect.plan import build_requests
from gpt4all.collect.sources import Prompt
from gpt4all.core.cpu import describe
from gpt4all.core.manifest import write_json
from gpt4all.core.schema.collect import TeacherSchema

PROMPTS = Path(str(importlib.resources.files("gpt4all.data") / "sample_prompts.jsonl"))


def prompts(n: int) -> list[Prompt]:
    """n distinct prompts: the bundled sample prompts, cycled and numbered to keep them distinct."""
    texts = [json.loads(x)["prompt"] for x in PROMPTS.open()]
    return [Prompt(str(i), f"{texts[i % len(texts)]} [{i}]", "bench") for i in range(n)]


def teacher(concurrency: int, timeout_s: float, http: str) -> Any:
    return OmegaConf.merge(OmegaConf.structured(TeacherSchema), {
        "name": "bench", "model": "bench", "api_key_env": None, "concurrency": concurrency, "max_tokens": 64,
        "http_client": http,
        "timeout_s": timeout_s, "max_retries": 3, "backoff_initial_s": 0.05, "backoff_max_s": 1.0})


async def run_collector(base_url: str, n: int, concurrency: int, cache_dir: Path, http: str) -> tuple[float, int]:
    t = teacher(concurrency, timeout_s=30, http=http)
    reqs = build_requests(prompts(n), t)
    client = make_client(t, base_url)
    with AnswerCache(cache_dir) as cache:
        collector = Collector(client, t, cache, Ledger(Price()), progress=False)
        await client.models.list()  # connection warm-up, as check_endpoint does
        start = time.perf_counter()
        await collector.run(reqs, total=len(reqs))
        elapsed = time.perf_counter() - start
        answered = cache.count("answered")
    await client.close()
    return elapsed, answered


def run_sequential(base_url: str, n: int) -> tuple[float, int]:
    client = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    ok = 0
    start = time.perf_counter()
    for p in prompts(n):
        r = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": p.prompt}], max_tokens=64)
        ok += bool(r.choices[0].message.content)
    return time.perf_counter() - start, ok


async def raw_aiohttp(base_url: str, n: int, concurrency: int) -> tuple[float, int]:
    """The practical limit of a client: `concurrency` workers post n chat completions with a bare aiohttp
    session (one pooled connection per worker) and count the answers with content. Returns (seconds, answered)."""
    bodies = [json.dumps({"model": "bench", "messages": [{"role": "user", "content": p.prompt}], "max_tokens": 64})
              for p in prompts(n)]
    url, headers = f"{base_url}/chat/completions", {"Content-Type": "application/json",
                                                    "Authorization": "Bearer sk-bench"}
    answered = 0

    async def worker(session: aiohttp.ClientSession, mine: list[str]) -> None:
        nonlocal answered
        for body in mine:
            async with session.post(url, data=body, headers=headers) as r:
                r.raise_for_status()
                answered += bool((await r.json())["choices"][0]["message"]["content"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async with session.get(f"{base_url}/models") as r:  # connection warm-up, as the collector's
            r.raise_for_status()
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, bodies[i::concurrency]) for i in range(concurrency)))
        return time.perf_counter() - start, answered


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "gpt4all.collect.testing_server", "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("the benchmark server did not start")
    return proc, url


def measure(client: str, url: str, n: int, concurrency: int, server_pid: int) -> dict[str, Any]:
    """One timed run of `client` ("raw aiohttp (no SDK)" or "gpt4all collector (<transport>)"): a result row."""
    cpu, server_cpu = time.process_time(), cpu_seconds(server_pid)
    if client == RAW:
        elapsed, ok = asyncio.run(raw_aiohttp(url, n, concurrency))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, ok = asyncio.run(run_collector(url, n, concurrency, Path(tmp), client.split("(")[1].rstrip(")")))
    return {"client": client, "concurrency": concurrency, "requests": n, "answered": ok, "seconds": elapsed,
            "requests_per_s": n / elapsed, "client_cpu_ms_per_request": (time.process_time() - cpu) / n * 1000,
            "server_cpu_ms_per_request": (cpu_seconds(server_pid) - server_cpu) / n * 1000}


RAW = "raw aiohttp (no SDK)"


def summarise(rows: list[dict[str, Any]], latency: float) -> list[dict[str, Any]]:
    """Per (client, concurrency) over the repeats: median req/s, and the shares of capacity and of the raw
    client's rate as medians of the per-repeat ratios with a 95 % bootstrap interval (raw and collector runs of
    one repeat are paired: they ran back to back)."""
    from gpt4all.core.metrics import ratio_ci

    out = []
    for client, c in dict.fromkeys((r["client"], r["concurrency"]) for r in rows):
        mine = [r for r in rows if (r["client"], r["concurrency"]) == (client, c)]
        raw = {r["repeat"]: r["requests_per_s"] for r in rows if (r["client"], r["concurrency"]) == (RAW, c)}
        rates = [r["requests_per_s"] for r in mine]
        paired = [(r["requests_per_s"], raw[r["repeat"]]) for r in mine if r["repeat"] in raw]
        out.append({
            "client": client, "concurrency": c, "repeats": len(mine), "requests": mine[0]["requests"],
            "answered": min(r["answered"] for r in mine), "requests_per_s": statistics.median(rates),
            "theoretical_max": c / latency,
            "of_capacity": ratio_ci(rates, [c / latency] * len(rates)),
            "of_raw": ratio_ci(*zip(*paired)) if paired and client != RAW else None,
            "client_cpu_ms_per_request": statistics.median(r["client_cpu_ms_per_request"] for r in mine),
            "server_cpu_ms_per_request": statistics.median(r["server_cpu_ms_per_request"] for r in mine)})
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench collect", description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.1, help="server latency per request, seconds")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--seconds", type=float, default=4.0, help="ideal duration per run (sets the request count)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each client at each concurrency, raw and collector back to back, alternating order")
    ap.add_argument("--http", nargs="+", default=["aiohttp", "httpx"], help="the openai SDK transports to measure")
    ap.add_argument("--sequential-requests", type=int, default=30)
    ap.add_argument("--out", default="outputs/bench/collect.json")
    args = ap.parse_args(argv)

    proc, url = start_server(args.latency)
    rows: list[dict[str, Any]] = []
    clients = [RAW] + [f"gpt4all collector ({http})" for http in args.http]
    try:
        load_before = os.getloadavg()[0]
        cpu, server_cpu = time.process_time(), cpu_seconds(proc.pid)
        elapsed, ok = run_sequential(url, args.sequential_requests)
        sequential = {"client": "sequential openai client (aside)", "concurrency": 1,
                      "requests": args.sequential_requests, "answered": ok, "seconds": elapsed,
                      "requests_per_s": args.sequential_requests / elapsed,
                      "client_cpu_ms_per_request": (time.process_time() - cpu) / args.sequential_requests * 1000,
                      "server_cpu_ms_per_request": (cpu_seconds(proc.pid) - server_cpu) / args.sequential_requests * 1000}
        for repeat in range(args.repeats):
            for c in args.concurrency:
                n = max(30, int(c * args.seconds / args.latency))
                for client in clients if repeat % 2 == 0 else clients[::-1]:
                    rows.append({**measure(client, url, n, c, proc.pid), "repeat": repeat})
                    print(f"  repeat {repeat + 1}/{args.repeats}, concurrency {c}: {client} "
                          f"{rows[-1]['requests_per_s']:.1f} req/s", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(10)
    summary = summarise(rows, args.latency)
    load = (load_before, os.getloadavg()[0])
    m = describe()
    print(f"collector throughput, server latency {args.latency * 1000:.0f} ms, no capacity limit; {m['cpu']} "
          f"({' '.join(m['flags'])}), {m['cpus']} CPUs; "
          f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after; {args.repeats} repeats (medians; "
          "95 % bootstrap intervals of the per-repeat ratios)")
    print("| client | concurrency | requests x repeats | answered | req/s | capacity req/s | of capacity "
          "| of raw aiohttp | client CPU ms/req | server CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    share = lambda d: f"{d['ratio']:.1%} [{d['ci_low']:.1%}, {d['ci_high']:.1%}]" if d else "-"
    for r in sorted(summary, key=lambda r: (r["concurrency"], r["client"] != RAW)):
        print(f"| {r['client']} | {r['concurrency']} | {r['requests']} x {r['repeats']} | {r['answered']} | "
              f"{r['requests_per_s']:.1f} | {r['theoretical_max']:.0f} | {share(r['of_capacity'])} | "
              f"{share(r['of_raw'])} | {r['client_cpu_ms_per_request']:.2f} | {r['server_cpu_ms_per_request']:.2f} |")
    print(f"aside: the sequential openai client, one request at a time: {sequential['requests_per_s']:.1f} req/s "
          f"({sequential['requests_per_s'] * args.latency:.1%} of its capacity)")
    at64 = [r for r in summary if r["concurrency"] == 64 and r["client"] == "gpt4all collector (aiohttp)"]
    if at64:
        print(f"goal at concurrency 64: {share(at64[0]['of_capacity'])} of capacity (>= 90 %), "
              f"{share(at64[0]['of_raw'])} of raw aiohttp (>= 95 %)")
    write_json(Path(args.out), {"latency_s": args.latency, "cpus": os.cpu_count(), "machine": m,
                                "load_average": load, "argv": argv, "summary": summary, "rows": rows,
                                "sequential": sequential})
    print(f"wrote {args.out}")
    return 0
