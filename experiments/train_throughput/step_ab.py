"""A/B of gpt4all-lab's CPU training step: the shipped step against the same step without each CPU change.

Variants (one LoRAModule each, same weights and packed batches, bf16 autocast as `gpt4all-bench train`):
- shipped: per-example attention (`sdpa_packed`) over one padding-free row per batch, `CPUDropout` and the
  chunked `linear_cross_entropy`, as `LoRAModule` trains on CPU;
- padded_rows: the packed rows as collated (padded to the longest row) instead of one padding-free row;
- flash_attention: per-example attention through torch's CPU flash kernel in float32 (the fallback of
  `sdpa_packed` for long examples) instead of its bf16 matmul path;
- masked_attention: transformers' SDPA with the block-diagonal mask over the packed row instead;
- torch_dropout: torch's `nn.Dropout` for the LoRA dropout instead of `CPUDropout`;
- full_logits: the vocabulary projection and cross-entropy over all response tokens at once (autograd) instead
  of `linear_cross_entropy`'s row chunks;
- before: all of the above reverted (the step before the CPU changes).
The variants run in turn on every batch (order alternating), so load from other processes hits them alike.
Also counts the page faults of each variant's steps, and times parts alone: forward + backward under bf16
autocast, the attention of one layer on the first packed batch (bf16 matmuls vs the flash kernel per example) and
the loss of 730 response tokens (chunked vs full logits); forward only, the dropout on one LoRA input and the
causal scores of one 300-token example (the mask filled in after the matmul vs a bias added inside it). Prints
tables, writes JSON.

    python experiments/train_throughput/step_ab.py --data ../shared/data/gpteacher/codegen.jsonl --out experiments/train_throughput/step_ab.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gpt4all.bench.train import LORA, load_pairs
from gpt4all.core.config import conf_dir
from gpt4all.core.models import load_model, load_tokenizer
from gpt4all.core.template import encode_pair, resolve_template
from gpt4all.train import attention
from gpt4all.train import module as lora_module
from gpt4all.train.attention import MATH_MAX_LENGTH
from gpt4all.train.batching import Collator, make_units
from gpt4all.train.cpu import CPUDropout
from gpt4all.train.loss import linear_cross_entropy
from gpt4all.train.module import LoRAModule

VARIANTS = ("shipped", "padded_rows", "flash_attention", "masked_attention", "torch_dropout", "full_logits", "before")


def build(variant: str, model_cfg, cache: str) -> tuple[LoRAModule, torch.optim.Optimizer]:
    module = LoRAModule(load_model(model_cfg, cache, seed=0), OmegaConf.create(LORA), lr=3e-4)
    module.on_fit_start()  # on CPU: per-example attention, as under the Trainer
    if variant == "padded_rows":
        module.model_batch = lambda batch: batch
    if variant in ("masked_attention", "before"):
        module.model.set_attn_implementation("sdpa")
    if variant in ("torch_dropout", "before"):
        for m in module.modules():
            if isinstance(m, torch.nn.ModuleDict):
                for key, drop in m.items():
                    if isinstance(drop, CPUDropout):
                        m[key] = torch.nn.Dropout(drop.p)
    return module, torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-4)


def full_logits(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction=reduction)


def step(module: LoRAModule, opt: torch.optim.Optimizer, batch: dict, variant: str) -> tuple[float, int]:
    """Seconds and minor page faults of one training step."""
    attention.MATH_MAX_LENGTH = 0 if variant == "flash_attention" else MATH_MAX_LENGTH
    lora_module.linear_cross_entropy = full_logits if variant in ("full_logits", "before") else linear_cross_entropy
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.loss(batch)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def time_fwd_bwd(fn, make_inputs, reps: int = 10) -> float:
    """Mean ms of fn(*inputs).sum().backward() under bf16 autocast, after one untimed call."""
    total = 0.0
    for i in range(reps + 1):
        inputs = make_inputs()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*inputs)
        out.float().sum().backward()
        total += (time.perf_counter() - start) if i else 0.0
    return total / reps * 1000


def time_attention(layer: torch.nn.Module, position_ids: torch.Tensor) -> dict[str, float]:
    """One layer's attention on a packed batch, SmolLM2's shapes; q and k in float32 and v in bf16, as they
    come out of the rotary embedding and v_proj under autocast."""
    cfg = layer.config
    rows, length = position_ids.shape
    heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def inputs():
        return (torch.randn(rows, heads, length, dim, requires_grad=True),
                torch.randn(rows, kv_heads, length, dim, requires_grad=True),
                torch.randn(rows, kv_heads, length, dim, dtype=torch.bfloat16, requires_grad=True))

    out = {}
    for name, limit in (("flash kernel per example (float32)", 0), ("bf16 matmuls per example", MATH_MAX_LENGTH)):
        attention.MATH_MAX_LENGTH = limit
        out[name] = time_fwd_bwd(lambda q, k, v: attention.packed_sdpa_attention(
            layer, q, k, v, None, position_ids=position_ids, scaling=layer.scaling)[0], inputs)
    attention.MATH_MAX_LENGTH = MATH_MAX_LENGTH
    return out


def time_loss(weight: torch.Tensor, tokens: int = 730) -> dict[str, float]:
    targets = torch.randint(0, weight.shape[0], (tokens,))
    def inputs():
        return (torch.randn(tokens, weight.shape[1], requires_grad=True),)

    return {name: time_fwd_bwd(lambda h, fn=fn: fn(h, weight, targets), inputs)
            for name, fn in (("full logits", full_logits), ("chunked", linear_cross_entropy))}


def mean_ms(fn, reps: int = 50) -> float:
    """Mean ms of fn() after one untimed call."""
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def time_dropout(p: float = 0.05) -> dict[str, float]:
    x = torch.randn(1024, 576)
    levels = 1 << 15
    threshold = round(p * levels)

    def bool_mask(t):  # CPUDropout before its int16 keep mask: compare to bool, cast the bool
        draws = torch.empty((t.numel() + 3) // 4, dtype=torch.int64).random_()
        uniform = draws.view(torch.int16)[: t.numel()].view(t.shape).bitwise_and_(levels - 1)
        return t * (uniform >= threshold).to(t.dtype).mul_(levels / (levels - threshold))

    rand_like = lambda t: t * ((torch.rand_like(t) >= p).to(t.dtype) * (1.0 / (1.0 - p)))  # the first CPUDropout
    fns = {"torch F.dropout": lambda t: F.dropout(t, p, True), "rand_like mask": rand_like,
           "15-bit draws, bool mask": bool_mask, "CPUDropout": CPUDropout(p).train()}
    return {name: mean_ms(lambda fn=fn: fn(x)) for name, fn in fns.items()}


def time_causal_scores(length: int = 300, kv_heads: int = 3, groups: int = 3) -> dict[str, float]:
    """The causal scores of one example (SmolLM2's heads, bf16): the mask filled in after the matmul (before)
    against the cached -inf bias added inside it (`attention.causal_bias`)."""
    query = torch.randn(kv_heads, groups * length, 64, dtype=torch.bfloat16)
    key_t = torch.randn(kv_heads, length, 64, dtype=torch.bfloat16).transpose(1, 2)
    future = torch.ones(length, length, dtype=torch.bool).triu_(1)
    filled = lambda: torch.bmm(query, key_t).view(kv_heads, groups, length, length).masked_fill_(future, float("-inf"))
    biased = lambda: torch.baddbmm(attention.causal_bias(length, groups, query.dtype, query.device), query, key_t)
    torch.testing.assert_close(filled().view_as(biased()), biased(), atol=0, rtol=0)
    return {"bmm + masked_fill_": mean_ms(filled), "baddbmm with causal_bias": mean_ms(biased)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="JSONL with prompt, response (e.g. gpteacher/codegen.jsonl)")
    ap.add_argument("--examples", type=int, default=400, help="pairs packed into batches (fewer pack less tightly)")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/train_step_ab.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    model_cfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
    cache = OmegaConf.load(conf_dir() / "paths" / "default.yaml").cache_dir
    tok = load_tokenizer(model_cfg, cache)
    template = resolve_template(model_cfg.template, tok)
    enc = lambda t: tok.encode(t, add_special_tokens=False)
    examples = [dict(zip(("input_ids", "labels"), encode_pair(enc, template, p, r, 512)))
                for p, r in load_pairs(args.data, args.examples)]
    units = make_units(examples, "pack", 2, 512, 0)
    collate = Collator(tok.pad_token_id, pack=True)
    batches = [collate(units[i:i + 2]) for i in range(0, min(2 * args.batches, len(units) - 1), 2)]
    variants = [v for v in VARIANTS if v in args.variants]
    models = {v: build(v, model_cfg, cache) for v in variants}
    total, faults = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0)
    for i, batch in enumerate(batches):
        for v in variants if i % 2 == 0 else variants[::-1]:
            dt, df = step(*models[v], batch, v)
            if i >= args.warmup:
                total[v] += dt
                faults[v] += df
    n = len(batches) - args.warmup
    rows = {v: total[v] / n for v in variants}
    faults = {v: faults[v] // n for v in variants}
    print(f"{'variant':18} {'s/step':>7} {'vs shipped':>10} {'page faults/step':>17}")
    for v, s in rows.items():
        print(f"{v:18} {s:7.3f} {s / rows['shipped']:9.2f}x {faults[v]:17d}")
    shipped = models["shipped"][0].model
    alone = {"attention_one_layer_ms": time_attention(shipped.base_model.model.model.layers[0].self_attn,
                                                      batches[0]["position_ids"]),
             "loss_730_tokens_ms": time_loss(shipped.get_output_embeddings().weight),
             "dropout_1024x576_ms": time_dropout(), "causal_scores_L300_ms": time_causal_scores()}
    for part, times in alone.items():
        print(f"{part}: " + ", ".join(f"{k} {ms:.2f}" for k, ms in times.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"s_per_step": rows, "page_faults_per_step": faults, "measured_steps": n,
                                    **alone, "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
