"""`gpt4all-bench evaluate`: the project's scoring vs lm-evaluation-harness 0.4.13 on the same Self-Instruct pairs.

A local lm-eval task (`lm_eval_task`): each of the 252 user-oriented Self-Instruct pairs as one loglikelihood
request, context = the instruction in the model's chat template, continuation = the reference response. Both
sides score the same model object (SmolLM2-135M, float32) and the same tokens: lm-eval moves the context's
trailing whitespace (the template's newline) into the continuation, so the project's batched scorer
(`gpt4all.core.lm.HFLM.nll`, length-sorted batches, head only on scored positions) gets exactly lm-eval's split.
Per-item log-likelihoods must agree within 1e-4; time side by side (lm-eval's whole `simple_evaluate` and its
`loglikelihood` call alone). For a GGUF (default: the bundled SmolLM2 Q4_1), lm-eval's gguf backend (one HTTP
request per item to a llama.cpp server with echo + logprobs) against the project's in-process llama.cpp scoring
(`GGUFLM.nll`) of the same pairs, both on one thread, in the Alpaca text template (with the chat template's special
tokens llama-cpp-python's echo offsets are wrong and lm-eval's gguf backend misplaces or crashes; see gguf_section).

    gpt4all-bench evaluate [--limit N] [--batch-size 8] [--no-gguf] [--naive] [--out outputs/bench/evaluate.json]
Goals (issue 15): >= 1.0x lm-eval's HF backend with equal values; >= 3x its gguf backend on the same GGUF.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from gpt4all.core.config import conf_dir
from gpt4all.core.cpu import describe
from gpt4all.core.lm import GGUFLM, HFLM
from gpt4all.core.manifest import write_json
from gpt4all.core.metrics import instruction_prompt
from gpt4all.core.models import load_model, load_tokenizer, resolve_gguf
from gpt4all.core.template import (
    IGNORE_INDEX,
    encode_pair,
    render_prompt,
    resolve_template,
)

TASK = "gpt4all_self_instruct_ll"
INSTALL = 'pip install -e ".[bench]"'


def lm_eval_task(jsonl: str | Path, name: str = TASK) -> dict[str, Any]:
    """An lm-eval task config over a JSONL of {"context", "continuation"} rows: one loglikelihood request per row,
    scoring the continuation given the context (no few-shot, no delimiter between them)."""
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
            "test_split": "test", "output_type": "loglikelihood", "doc_to_text": "{{context}}",
            "doc_to_target": "{{continuation}}", "target_delimiter": "", "num_fewshot": 0,
            # acc (is the continuation the greedy one) aggregates safely; perplexity of summed LLs overflows
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def lm_eval_loglikelihoods(lm: Any, pairs: list[tuple[str, str]], workdir: Path) -> tuple[list[float], float, float]:
    """Run the local task through `lm_eval.simple_evaluate` with an lm-eval LM; returns (per-item log-likelihood
    in input order, seconds of the whole call, seconds inside lm.loglikelihood)."""
    import lm_eval

    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps({"context": c, "continuation": x}) + "\n" for c, x in pairs))
    inner = lm.loglikelihood
    spent = [0.0]

    def timed(requests, *a, **k):
        t = time.perf_counter()
        try:
            return inner(requests, *a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    lm.loglikelihood = timed
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[lm_eval_task(path)], log_samples=True, bootstrap_iters=0,
                                 verbosity="WARNING")
    total = time.perf_counter() - start
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return [float(s["filtered_resps"][0][0]) for s in samples], total, spent[0]


def lm_eval_split(encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids and labels as lm-eval's causal HF models split a pair (TemplateLM._encode_pair): the context's
    trailing whitespace moves to the continuation; the continuation is the whole text's ids after the context's."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return whole, [IGNORE_INDEX] * len(ctx) + whole[len(ctx):]


def naive_loop(model, tok, template, examples, max_length: int) -> list[float]:
    """The obvious implementation (an aside): one example at a time, full logits, HF's own label-masked loss."""
    out = []
    with torch.inference_mode():
        for ins, inp, ref in examples:
            ids, labels = encode_pair(lambda t: tok.encode(t, add_special_tokens=False), template,
                                      instruction_prompt(ins, inp), ref, max_length, add_suffix=False)
            out.append(model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
    return out


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))), default=float("nan"))


def hf_section(model, tok, pairs, args, tmp: Path) -> dict[str, Any]:
    from lm_eval.models.huggingface import HFLM as LMEvalHF

    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    split = [lm_eval_split(enc, c, x) for c, x in pairs]
    seqs, labels = [s for s, _ in split], [lab for _, lab in split]
    tokens = sum(len(s) for s in seqs)
    lm = HFLM(model, tok)
    lm.nll(seqs[:2], labels[:2], batch_size=2, progress=False)  # warm-up (thread pools, allocator), untimed
    start = time.perf_counter()
    ours = [-s for s, _ in lm.nll(seqs, labels, batch_size=args.batch_size, progress=False)]
    t_ours = time.perf_counter() - start
    # log-softmax in float64 on both sides (the project's scorer always does), so only the forward can differ
    peer = LMEvalHF(pretrained=model, tokenizer=tok, batch_size=args.batch_size, max_length=args.max_length,
                    softmax_dtype=torch.float64)
    theirs, t_total, t_ll = lm_eval_loglikelihoods(peer, pairs, tmp)
    return {"tokens": tokens, "gpt4all_s": t_ours, "lm_eval_s": t_total, "lm_eval_loglikelihood_s": t_ll,
            "speedup": t_total / t_ours, "speedup_vs_loglikelihood_call": t_ll / t_ours,
            "max_abs_loglikelihood_diff": max_abs_diff(ours, theirs), "items": len(ours),
            "gpt4all_loglikelihoods": ours, "lm_eval_loglikelihoods": theirs}


def gguf_section(gguf: Path, pairs, args, tmp: Path) -> dict[str, Any]:
    """lm-eval's gguf backend vs GGUFLM.nll on `pairs` (text-template contexts: llama-cpp-python's echo offsets
    leave out special tokens such as <|im_start|>, so lm-eval's gguf backend misplaces a chat-template
    continuation, or fails with IndexError)."""
    from lm_eval.models.gguf import GGUFLM as LMEvalGGUF

    from gpt4all.collect.server import LlamaCppServer

    lm = GGUFLM(gguf, n_threads=1, n_ctx=args.max_length)
    enc = lambda t: lm.encode(t)  # noqa: E731
    seqs, labels = zip(*(([*enc(c), *enc(x)], [IGNORE_INDEX] * len(enc(c)) + enc(x)) for c, x in pairs))
    lm.nll(seqs[:1], labels[:1], progress=False)  # warm-up, untimed
    start = time.perf_counter()
    ours = [-s for s, _ in lm.nll(seqs, labels, progress=False)]
    t_ours = time.perf_counter() - start
    lm.close()
    server = LlamaCppServer(str(gguf), n_ctx=args.max_length, n_threads=1, extra_args=["--logits_all", "True"],
                            log_path=tmp / "llama_server.log")
    with server as base_url:
        peer = LMEvalGGUF(base_url=base_url.removesuffix("/v1"), max_length=args.max_length)
        theirs, t_total, t_ll = lm_eval_loglikelihoods(peer, pairs, tmp)
    return {"gguf": str(gguf), "tokens": sum(map(len, seqs)), "gpt4all_s": t_ours, "lm_eval_s": t_total,
            "lm_eval_loglikelihood_s": t_ll, "speedup": t_total / t_ours, "items": len(ours),
            "max_abs_loglikelihood_diff": max_abs_diff(ours, theirs),
            "gpt4all_loglikelihoods": ours, "lm_eval_loglikelihoods": theirs}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="Self-Instruct user_oriented_instructions.jsonl")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048, help="long enough that no pair is truncated")
    ap.add_argument("--gguf", default="bundled", help="GGUF for the gguf comparison (bundled: SmolLM2 Q4_1)")
    ap.add_argument("--no-gguf", action="store_true")
    ap.add_argument("--gguf-limit", type=int, default=0, help="pairs for the gguf comparison (0: all)")
    ap.add_argument("--naive", action="store_true", help="also time a naive per-example HF loop (an aside)")
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/gpt4all-lab").expanduser()))
    ap.add_argument("--out", default="outputs/bench/evaluate.json")
    args = ap.parse_args(argv)

    from gpt4all.evaluate.suites import load_suite

    machine = {**describe(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    model_cfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
    ev = OmegaConf.create({"name": "self_instruct", "format": "self_instruct", "path": args.suite, "limit": args.limit})
    examples = [e.triple() for e in load_suite(ev)]
    model, tok = load_model(model_cfg, args.cache_dir), load_tokenizer(model_cfg, args.cache_dir)
    model.eval()
    template = resolve_template(model_cfg.template, tok)
    pairs = [(render_prompt(template, instruction_prompt(i, x)), o) for i, x, o in examples]
    res: dict[str, Any] = {"examples": len(pairs), "batch_size": args.batch_size, "machine": machine,
                           "argv": argv, "goal": "hf speedup >= 1.0 with max diff <= 1e-4; gguf speedup >= 3"}
    try:
        import lm_eval  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure skips the peer, the rest still runs
        res["skipped"] = f"lm-eval does not import ({type(e).__name__}: {e}); install the peers with {INSTALL}"
        print(f"skipping lm-eval: {res['skipped']}")
    with tempfile.TemporaryDirectory() as tmp:
        if "skipped" not in res:
            res["hf"] = hf_section(model, tok, pairs, args, Path(tmp))
            if not args.no_gguf:
                text = resolve_template(OmegaConf.load(conf_dir() / "template" / "alpaca.yaml"), tok)
                text_pairs = [(render_prompt(text, instruction_prompt(i, x)), o) for i, x, o in examples]
                res["gguf"] = gguf_section(resolve_gguf(args.gguf), text_pairs[: args.gguf_limit or None], args,
                                           Path(tmp))
                res["gguf"]["template"] = "alpaca (text; see gguf_section)"
    if args.naive:
        start = time.perf_counter()
        naive_loop(model, tok, template, examples, args.max_length)
        res["naive_s"] = time.perf_counter() - start
    res["loadavg_after"] = describe()["loadavg"]
    print(f"CPU: {machine['cpu']} ({machine['cpus']} CPUs, {machine['threads']} torch threads), flags "
          f"{', '.join(machine['flags'])}; load average {machine['loadavg'][0]:.1f} -> {res['loadavg_after'][0]:.1f}")
    print(f"{'backend':<10}{'items':>6}{'tokens':>8}{'gpt4all s':>11}{'lm-eval s':>11}{'(its ll call)':>14}"
          f"{'speed-up':>10}{'max |LL diff|':>15}")
    for key in ("hf", "gguf"):
        if key in res:
            r = res[key]
            print(f"{key:<10}{r['items']:>6}{r['tokens']:>8}{r['gpt4all_s']:>11.1f}{r['lm_eval_s']:>11.1f}"
                  f"{r['lm_eval_loglikelihood_s']:>14.1f}{r['speedup']:>9.2f}x{r['max_abs_loglikelihood_diff']:>15.2e}")
    if "naive_s" in res:
        print(f"aside: naive per-example HF loop {res['naive_s']:.1f} s")
    write_json(Path(args.out), res)
    print(f"wrote {args.out}")
    return 0
