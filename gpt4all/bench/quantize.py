"""`gpt4all-bench quantize`: the quantization trade-off on SmolLM2-135M: size, generation tokens/s and
perplexity of fp32 HF vs. llama.cpp GGUF f16 / q8_0 / q4_0 (and q4_k_m) on the same prompt and examples.

    gpt4all-bench quantize [--schemes f16,q8_0,q4_0,q4_k_m] [--tokens 64] [--limit 60] [--threads 1]
Goal (issue 6): q4_0 decodes >= 5x faster than fp32 HF generate; its perplexity at most 5 % higher.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gpt4all.core.config import conf_dir
from gpt4all.core.lm import GGUFLM, HFLM, score_nll
from gpt4all.core.metrics import perplexities
from gpt4all.core.models import load_model, load_tokenizer
from gpt4all.core.template import render_prompt

PROMPT = "Write a short story about a robot who learns to paint."
DECODE_CEILING = 300.0  # FACTS.md: q4_0 135M decode, memory-bound, 2 cores


def _speed(lm, prompt: str, tokens: int, repeats: int = 3) -> float:
    return statistics.median(lm.generate(prompt, tokens).tokens_per_s for _ in range(repeats))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench quantize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", default="f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=60, help="bundled-sample / self-instruct examples for perplexity")
    ap.add_argument("--suite", default=None, help="self-instruct JSONL (default: the bundled 30-example sample)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/gpt4all-lab").expanduser()))
    ap.add_argument("--out", default="outputs/bench/quantize.json")
    args = ap.parse_args(argv)

    from gpt4all.evaluate.suites import load_suite
    from gpt4all.quantize.convert import export_gguf
    from gpt4all.quantize.gguf import quantize_gguf
    from gpt4all.quantize.hf_quant import weights_size_mb

    model_cfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
    ev = OmegaConf.create({"name": "b", "format": "self_instruct" if args.suite else "pairs", "path": args.suite,
                           "limit": args.limit})
    examples = [e.triple() for e in load_suite(ev)]
    prompt = render_prompt(model_cfg.template, PROMPT)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        model = load_model(model_cfg, args.cache_dir)
        model.save_pretrained(hf_dir)
        tokenizer = load_tokenizer(model_cfg, args.cache_dir)
        tokenizer.save_pretrained(hf_dir)
        hf = HFLM(model, tokenizer)
        torch.set_num_threads(max(1, args.threads))
        hf_nll = score_nll(hf, "conditional", examples, model_cfg.template, batch_size=8, progress=False)
        base = {"scheme": "fp32 (HF)", "size_mb": weights_size_mb(hf_dir), "tokens_per_s": _speed(hf, prompt, args.tokens),
                "median_ppl": statistics.median(perplexities(hf_nll, clip=1e9)), "mean_nll": statistics.mean(hf_nll)}
        rows.append(base)
        hf.close()
        start = time.perf_counter()
        f16 = export_gguf(hf_dir, Path(tmp) / "f16.gguf")
        export_s = time.perf_counter() - start
        for scheme in args.schemes.split(","):
            start = time.perf_counter()
            path = f16 if scheme == "f16" else quantize_gguf(f16, Path(tmp) / f"{scheme}.gguf", scheme)
            seconds = export_s + (time.perf_counter() - start if scheme != "f16" else 0.0)
            lm = GGUFLM(path, n_threads=args.threads, n_ctx=1024)
            try:
                nll = score_nll(lm, "conditional", examples, model_cfg.template, progress=False)
                rows.append({"scheme": scheme, "size_mb": weights_size_mb(path), "seconds": round(seconds, 1),
                             "tokens_per_s": _speed(lm, prompt, args.tokens),
                             "median_ppl": statistics.median(perplexities(nll, clip=1e9)),
                             "mean_nll": statistics.mean(nll)})
            finally:
                lm.close()
    for r in rows:
        r["speedup_vs_fp32"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
        r["ppl_change_pct"] = round(100 * (r["median_ppl"] / base["median_ppl"] - 1), 2)
        r["mean_ppl_change_pct"] = round(100 * (2.718281828 ** (r["mean_nll"] - base["mean_nll"]) - 1), 2)
        r["decode_of_ceiling"] = round(r["tokens_per_s"] / DECODE_CEILING, 3)
    print(f"{'scheme':<11}{'MB':>8}{'tok/s':>8}{'x fp32':>8}{'of ~300':>9}{'median ppl':>12}{'change':>9}")
    for r in rows:
        print(f"{r['scheme']:<11}{r['size_mb']:>8.1f}{r['tokens_per_s']:>8.1f}{r['speedup_vs_fp32']:>8.2f}"
              f"{r['decode_of_ceiling']:>9.0%}{r['median_ppl']:>12.3f}{r['ppl_change_pct']:>8.1f}%")
    q4 = next((r for r in rows if r["scheme"] == "q4_0"), None)
    if q4:
        print(f"q4_0: {q4['speedup_vs_fp32']}x fp32 decode (goal >= 5x); median perplexity "
              f"{q4['ppl_change_pct']:+.1f} % (goal <= +5 %)")
    res = {"examples": len(examples), "tokens": args.tokens, "threads": args.threads, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0
