"""`gpt4all-bench evaluate`: batched, length-sorted perplexity (gpt4all.core.metrics) vs. a naive per-example HF
loop on the same model and examples: speed-up and the largest difference in per-example NLL.

    gpt4all-bench evaluate --suite PATH [--limit N] [--batch-size 8] [--out outputs/bench/evaluate.json]
Goal (issue 6): at least 3x faster, values identical within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gpt4all.core.config import conf_dir
from gpt4all.core.lm import HFLM, score_nll
from gpt4all.core.metrics import instruction_prompt
from gpt4all.core.models import load_model, load_tokenizer
from gpt4all.core.template import IGNORE_INDEX, encode_pair

FP32_GFLOPS = 375.0  # FACTS.md: fp32 matmul ceiling of the 2 cores


def naive_loop(model, tok, template, examples, max_length: int) -> list[float]:
    """The obvious implementation: one example at a time, full logits, HF's own label-masked loss."""
    out = []
    with torch.inference_mode():
        for ins, inp, ref in examples:
            ids, labels = encode_pair(lambda t: tok.encode(t, add_special_tokens=False), template,
                                      instruction_prompt(ins, inp), ref, max_length, add_suffix=False)
            if all(x == IGNORE_INDEX for x in labels[1:]):
                out.append(float("nan"))
                continue
            out.append(model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="Self-Instruct user_oriented_instructions.jsonl")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/gpt4all-lab").expanduser()))
    ap.add_argument("--out", default="outputs/bench/evaluate.json")
    args = ap.parse_args(argv)

    from gpt4all.evaluate.suites import load_suite

    model_cfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
    ev = OmegaConf.create({"name": "self_instruct", "format": "self_instruct", "path": args.suite, "limit": args.limit})
    examples = [e.triple() for e in load_suite(ev)]
    model, tok = load_model(model_cfg, args.cache_dir), load_tokenizer(model_cfg, args.cache_dir)
    n_tokens = sum(len(tok.encode(instruction_prompt(i, x) + o)) for i, x, o in examples)

    start = time.perf_counter()
    naive = naive_loop(model, tok, model_cfg.template, examples, args.max_length)
    t_naive = time.perf_counter() - start
    start = time.perf_counter()
    fast = score_nll(HFLM(model, tok), "conditional", examples, model_cfg.template, args.max_length, args.batch_size)
    t_fast = time.perf_counter() - start

    diff = max(abs(a - b) for a, b in zip(naive, fast) if not (math.isnan(a) or math.isnan(b)))
    params = sum(p.numel() for p in model.parameters())
    ceiling = FP32_GFLOPS * 1e9 / (2 * params)
    res = {"examples": len(examples), "tokens": n_tokens, "threads": torch.get_num_threads(),
           "naive_s": round(t_naive, 2), "batched_s": round(t_fast, 2), "speedup": round(t_naive / t_fast, 2),
           "max_abs_nll_diff": diff, "batched_tokens_per_s": round(n_tokens / t_fast, 1),
           "naive_tokens_per_s": round(n_tokens / t_naive, 1), "fp32_ceiling_tokens_per_s": round(ceiling),
           "batch_size": args.batch_size, "goal": "speedup >= 3, max_abs_nll_diff <= 1e-4"}
    print(f"{'method':<10}{'seconds':>10}{'tokens/s':>10}{'of fp32 ceiling':>17}")
    for name, t in (("naive", t_naive), ("batched", t_fast)):
        print(f"{name:<10}{t:>10.1f}{n_tokens / t:>10.0f}{n_tokens / t / ceiling:>16.0%}")
    print(f"speed-up {res['speedup']}x (goal >= 3x); max |NLL difference| {diff:.2e} (goal <= 1e-4)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0
