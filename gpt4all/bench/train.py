"""`gpt4all-bench train`: gpt4all-lab's trainer vs TRL's SFTTrainer (the strongest peer) and HF Trainer + PEFT.

Same data, model (SmolLM2-135M), LoRA (r 8, alpha 16, dropout 0.05 on q_proj, v_proj), lr schedule (linear decay,
no warm-up), precision and seed, in one process. The trainers alternate: each round trains each of them for one
epoch from the same initial weights, the order reversed every round (A B C, C B A, ...), so drift of a shared
machine cancels in the ratios; every precision asked for (bf16 and fp32 by default) gets its own rounds.
- TRL `SFTTrainer` as TRL recommends for this task: BFD packing (hence padding-free: a batch is one flattened
  sequence with position_ids restarting per example), completion-only loss, its fused chunked LM head. On a CPU
  there is no varlen flash attention: transformers' SDPA gets a block-diagonal causal mask built from the
  position_ids, so attention stays within each example (checked here: `packed_attention_isolated`).
- HF Trainer + PEFT as alpaca-lora trains: pad to the longest in the batch, full logits, no packing.
- gpt4all-lab: ChatDataModule (packing) + LoRAModule in a Lightning Trainer; on a CPU its packed rows run as one
  padding-free row with per-example attention, so the pad column counts what the model computes.
Prints s/step, tokens/s (real tokens, prompt and response), useful tokens/s (response tokens, which carry the
loss), the held-out loss after the epoch (response-token NLL of the pairs after the training ones), the share of
this machine's matmul ceiling measured in the same run, the ratios with a bootstrap 95 % CI over steps, and
writes JSON (--out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from gpt4all.core.config import conf_dir
from gpt4all.core.cpu import describe
from gpt4all.core.manifest import write_json
from gpt4all.core.metrics import count_label_tokens, tokens_per_second
from gpt4all.core.models import load_model, load_tokenizer
from gpt4all.core.template import IGNORE_INDEX, encode_pair, resolve_template

LORA = {"_target_": "peft.LoraConfig", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"], "bias": "none"}
FLOPS_PER_TOKEN = 0.54e9  # LoRA training: about 4 x params FLOPs per token for 135M (FACTS.md)
LR = 3e-4
TRAINERS = ("gpt4all-lab", "trl_sft", "hf_trainer_peft")
PEERS = {"trl_sft": "trl"}  # trainer -> the package it needs (the `bench` extra)


def measured_matmul_flops(precision: str, seconds: float = 1.0) -> float:
    """FLOP/s of one SmolLM2-shaped matmul (2048 x 576 x 1536) on this machine, now: the ceiling that eager
    PyTorch can reach here (AMX, AVX512-BF16 and AVX2-only CPUs differ several-fold; never quote another's)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x, w = torch.randn(2048, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.nn.functional.linear(x, w)
        n += 1
    return n * 2 * 2048 * 576 * 1536 / (time.perf_counter() - start)


def load_pairs(path: Path, n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(str(r["prompt"]), str(r["response"])) for r in rows[:n]]


def encode_all(tok, template, pairs, max_length: int) -> list[tuple[list[int], list[int]]]:
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    return [encode_pair(enc, template, p, r, max_length) for p, r in pairs]


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def heldout_loss(model, encoded: list[tuple[list[int], list[int]]], precision: str) -> float:
    """Response-token NLL (token-weighted mean) of held-out pairs, one example per forward: the same measure for
    every trainer's model."""
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode(), autocast(precision):
        for ids, labels in encoded:
            k = sum(x != IGNORE_INDEX for x in labels[1:])
            if k:
                out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), use_cache=False)
                total, n = total + float(out.loss) * k, n + k
    return total / max(1, n)


def packed_attention_isolated(model, encoded: list[tuple[list[int], list[int]]]) -> float:
    """Largest |logit difference| between two examples run alone and the same two flattened into one sequence
    with position_ids restarting at 0 and no attention mask (TRL's padding-free batch), in float32: about 1e-5
    when the attention stays within each example."""
    (a, _), (b, _) = encoded[:2]
    with torch.inference_mode():
        alone = torch.cat([model(input_ids=torch.tensor([x]), use_cache=False).logits[0] for x in (a, b)])
        packed = model(input_ids=torch.tensor([a + b]), position_ids=torch.tensor([[*range(len(a)), *range(len(b))]]),
                       use_cache=False).logits[0]
    return float((alone - packed).abs().max())


def summarize(name: str, rows: list[tuple[float, int, int, int]], warm: int, precision: str) -> dict[str, Any]:
    """rows: per step (seconds, real tokens, useful tokens, token slots the model ran, incl. padding)."""
    times, tokens, useful, slots = (list(x) for x in zip(*rows))
    t, tok, use, sl = (sum(x[warm:]) for x in (times, tokens, useful, slots))
    steps = len(times) - warm
    ceiling = measured_matmul_flops(precision)
    return {"name": name, "precision": precision, "steps": steps, "s_per_step": t / max(1, steps),
            "tokens_per_s": tokens_per_second(tok, t), "useful_tokens_per_s": tokens_per_second(use, t),
            "pad_fraction": 1 - tok / max(1, sl), "matmul_flops": ceiling,
            "of_matmul": tokens_per_second(tok, t) * FLOPS_PER_TOKEN / ceiling,
            "step_rows": [list(r) for r in rows[warm:]]}


class StepTimer:
    """HF TrainerCallback-compatible step timing (on_step_begin / on_step_end)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, *a, **k):
        self.t = time.perf_counter()

    def on_step_end(self, *a, **k):
        self.times.append(time.perf_counter() - self.t)


def hf_timer():
    from transformers import TrainerCallback

    class Timer(StepTimer, TrainerCallback):
        pass

    return Timer()


def hf_args(cls, out: Path, precision: str, batch_size: int, args, **extra):
    return cls(output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=args.steps or -1,
               num_train_epochs=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0,
               bf16=precision == "bf16", use_cpu=True, logging_steps=10**6, report_to=[], save_strategy="no",
               dataloader_num_workers=0, seed=0, disable_tqdm=True, **extra)


def peft_config():
    from peft import LoraConfig

    return LoraConfig(**{k: v for k, v in LORA.items() if k != "_target_"})


def run_baseline(ctx: dict[str, Any], precision: str, args) -> tuple[dict[str, Any], Any]:
    """HF Trainer + PEFT as alpaca-lora trains: pad to the longest in the batch, full logits, no packing."""
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = ctx["tok"]
    data = [{"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)} for ids, labels in ctx["train"]]
    collator = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    seen: list[tuple[int, int, int]] = []

    def collate(features):
        batch = collator(features)
        seen.append((int(batch["attention_mask"].sum()), count_label_tokens(batch["labels"]), batch["input_ids"].numel()))
        return batch

    timer = hf_timer()
    model = get_peft_model(load_model(ctx["model_cfg"], ctx["cache"], seed=0), peft_config())
    targs = hf_args(TrainingArguments, Path(args.tmp) / "hf", precision, args.batch_size, args,
                    remove_unused_columns=False)
    Trainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[timer]).train()
    rows = [(t, *s) for t, s in zip(timer.times, seen)]
    return summarize("hf_trainer_peft", rows, args.warmup, precision), model


def run_trl(ctx: dict[str, Any], precision: str, args) -> tuple[dict[str, Any], Any]:
    """TRL SFTTrainer: BFD packing (padding-free), completion-only loss, on the same token ids as the others."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({
        "input_ids": [ids for ids, _ in ctx["train"]],
        "completion_mask": [[int(x != IGNORE_INDEX) for x in labels] for _, labels in ctx["train"]]})
    timer = hf_timer()
    targs = hf_args(SFTConfig, Path(args.tmp) / "trl", precision, args.lab_batch_size, args,
                    packing=True, packing_strategy="bfd", padding_free=True, completion_only_loss=True,
                    max_length=args.max_length, dataset_num_proc=None)
    trainer = SFTTrainer(model=load_model(ctx["model_cfg"], ctx["cache"], seed=0), args=targs, train_dataset=data,
                         processing_class=ctx["tok"], peft_config=peft_config(), callbacks=[timer])
    seen: list[tuple[int, int, int]] = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        n = int(batch["input_ids"].numel())
        seen.append((n, count_label_tokens(batch["labels"]), n))  # padding-free: every slot is a real token
        return batch

    trainer.data_collator = counting
    trainer.train()
    rows = [(t, *s) for t, s in zip(timer.times, seen)]
    return summarize("trl_sft (bfd packing, padding-free)", rows, args.warmup, precision), trainer.model


def run_lab(ctx: dict[str, Any], precision: str, args) -> tuple[dict[str, Any], Any]:
    """gpt4all-lab: ChatDataModule (packing) + LoRAModule in a Lightning Trainer."""
    import lightning as L

    from gpt4all.train.callbacks import Throughput
    from gpt4all.train.data import ChatDataModule
    from gpt4all.train.module import LoRAModule

    dm = ChatDataModule(ctx["dataset_dir"], ctx["tok"], ctx["template"], max_length=args.max_length,
                        batch_size=args.lab_batch_size, val_fraction=0.0, seed=0, packing=args.packing)
    module = LoRAModule(load_model(ctx["model_cfg"], ctx["cache"], seed=0), OmegaConf.create(LORA), lr=LR,
                        warmup_steps=0, schedule="linear")

    class Record(L.Callback):
        def __init__(self):
            self.rows: list[tuple[float, int, int, int]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.rows.append((time.perf_counter() - self.t, int(batch["token_mask"].sum()),
                              count_label_tokens(batch["labels"]), pl_module.model_batch(batch)["input_ids"].numel()))

    rec = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.steps or -1, max_epochs=1,
                        precision="bf16-mixed" if precision == "bf16" else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Throughput(), rec], gradient_clip_val=1.0, use_distributed_sampler=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm)
    return summarize(f"gpt4all-lab ({args.packing})", rec.rows, args.warmup, precision), module.model


RUNNERS = {"gpt4all-lab": run_lab, "trl_sft": run_trl, "hf_trainer_peft": run_baseline}


def missing_peers(trainers: list[str]) -> dict[str, str]:
    """Trainers whose peer package does not import: name -> the error (the rest of the benchmark still runs)."""
    out = {}
    for name in trainers:
        if name in PEERS:
            try:
                __import__(PEERS[name])
            except Exception as e:  # noqa: BLE001 - any import failure (missing, broken dependency) skips the peer
                out[name] = f"{type(e).__name__}: {e}"
    return out


def ratio_ci(lab: list[list[float]], peer: list[list[float]], col: int, n: int = 2000) -> tuple[float, float, float]:
    """Ratio of rates sum(col) / sum(seconds), lab over peer, and its bootstrap 95 % CI (steps resampled)."""
    a, b = np.asarray(lab, float), np.asarray(peer, float)
    rate = lambda x: x[:, col].sum() / x[:, 0].sum()  # noqa: E731
    rng = np.random.default_rng(0)
    boot = [rate(a[rng.integers(0, len(a), len(a))]) / rate(b[rng.integers(0, len(b), len(b))]) for _ in range(n)]
    return rate(a) / rate(b), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="JSONL with prompt, response (e.g. gpteacher/codegen.jsonl)")
    ap.add_argument("--examples", type=int, default=200, help="training pairs (one epoch each)")
    ap.add_argument("--heldout", type=int, default=48, help="pairs after the training ones, for the held-out loss")
    ap.add_argument("--steps", type=int, default=0,
                    help="optimizer steps per trainer; 0: one epoch over --examples (all trainers see the same data)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per precision (the order reverses each round)")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the averages")
    ap.add_argument("--batch-size", type=int, default=4, help="HF Trainer examples per step")
    ap.add_argument("--lab-batch-size", type=int, default=2, help="packed rows per step (gpt4all-lab and TRL)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--packing", default="pack", choices=["pack", "group_by_length", "none"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/train.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_file():
        ap.error(f"--data {args.data}: no such file")
    missing = missing_peers(args.trainers)
    for name, err in missing.items():
        print(f"skipping {name}: {PEERS[name]} does not import ({err}); install the peers with "
              f"pip install -e \".[bench]\"")
    trainers = [t for t in args.trainers if t not in missing]
    machine = {**describe(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    model_cfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
    cache = OmegaConf.load(conf_dir() / "paths" / "default.yaml").cache_dir  # as the stages resolve it
    pairs = load_pairs(args.data, args.examples + args.heldout)
    if len(pairs) < args.examples + args.heldout:
        ap.error(f"--data {args.data}: {len(pairs)} pairs, fewer than --examples + --heldout")
    tok = load_tokenizer(model_cfg, cache)
    template = resolve_template(model_cfg.template, tok)
    ctx = {"model_cfg": model_cfg, "cache": cache, "tok": tok, "template": template,
           "train": encode_all(tok, template, pairs[: args.examples], args.max_length),
           "heldout": encode_all(tok, template, pairs[args.examples:], args.max_length)}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        from datasets import Dataset

        args.tmp = tmp
        ctx["dataset_dir"] = Path(tmp) / "dataset"
        train_pairs = pairs[: args.examples]
        Dataset.from_dict({"id": [str(i) for i in range(len(train_pairs))], "prompt": [p for p, _ in train_pairs],
                           "response": [r for _, r in train_pairs], "source": ["bench"] * len(train_pairs)}
                          ).save_to_disk(str(ctx["dataset_dir"]))
        isolation = packed_attention_isolated(load_model(model_cfg, cache, seed=0), ctx["train"])
        for precision in args.precisions:
            for rnd in range(args.rounds):
                for name in trainers if rnd % 2 == 0 else trainers[::-1]:
                    load = os.getloadavg()[0]
                    res, model = RUNNERS[name](ctx, precision, args)
                    res.update(trainer=name, round=rnd, heldout_loss=heldout_loss(model, ctx["heldout"], precision),
                               loadavg_before=load, loadavg_after=os.getloadavg()[0])
                    results.append(res)
                    print(f"[{precision} round {rnd}] {res['name']}: {res['useful_tokens_per_s']:.1f} useful tokens/s, "
                          f"held-out loss {res['heldout_loss']:.4f}", flush=True)
                    del model
                    gc.collect()
    summary = compare(results, trainers, args.precisions)
    print_table(results, summary, machine, isolation)
    write_json(args.out, {"argv": argv, "args": {k: str(v) for k, v in vars(args).items() if k != "tmp"},
                          "machine": machine, "skipped": missing, "packed_attention_max_abs_logit_diff": isolation,
                          "results": results, "summary": summary})
    print(f"wrote {args.out}")
    return 0


def compare(results: list[dict[str, Any]], trainers: list[str], precisions: list[str]) -> dict[str, Any]:
    """Per precision and trainer: pooled rates over rounds; lab / peer ratios with a bootstrap CI; loss gaps."""
    out: dict[str, Any] = {}
    for prec in precisions:
        pooled = {}
        for name in trainers:
            rs = [r for r in results if r["trainer"] == name and r["precision"] == prec]
            rows = [row for r in rs for row in r["step_rows"]]
            t = sum(x[0] for x in rows)
            pooled[name] = {"rows": rows, "tokens_per_s": sum(x[1] for x in rows) / t,
                            "useful_tokens_per_s": sum(x[2] for x in rows) / t,
                            "of_matmul": sum(x[1] for x in rows) / t * FLOPS_PER_TOKEN
                            / float(np.median([r["matmul_flops"] for r in rs])),
                            "matmul_gflops": float(np.median([r["matmul_flops"] for r in rs])) / 1e9,
                            "heldout_loss": float(np.mean([r["heldout_loss"] for r in rs]))}
        ratios = {}
        if "gpt4all-lab" in pooled:
            lab = pooled["gpt4all-lab"]
            for peer in (p for p in trainers if p != "gpt4all-lab"):
                useful = ratio_ci(lab["rows"], pooled[peer]["rows"], 2)
                tokens = ratio_ci(lab["rows"], pooled[peer]["rows"], 1)
                ratios[peer] = {"useful_tokens_per_s": useful, "tokens_per_s": tokens,
                                "heldout_loss_rel_diff": lab["heldout_loss"] / pooled[peer]["heldout_loss"] - 1}
        out[prec] = {"pooled": {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in pooled.items()},
                     "lab_over": ratios}
    return out


def print_table(results, summary, machine, isolation) -> None:
    print(f"\nCPU: {machine['cpu']} ({machine['cpus']} CPUs, {machine['threads']} torch threads), flags: "
          f"{', '.join(machine['flags'])}; native bf16: {'yes' if machine['native_bf16'] else 'no (emulated)'}")
    print(f"TRL padding-free attention on CPU: SDPA with a block-diagonal mask; packed vs alone max |logit diff| "
          f"{isolation:.1e} (stays within each example)")
    print(f"{'precision':9} {'round':>5} {'trainer':38} {'s/step':>7} {'tokens/s':>9} {'useful/s':>9} {'pad %':>6} "
          f"{'of matmul %':>11} {'held-out loss':>13} {'load':>5}")
    for r in results:
        print(f"{r['precision']:9} {r['round']:>5} {r['name']:38} {r['s_per_step']:7.2f} {r['tokens_per_s']:9.1f} "
              f"{r['useful_tokens_per_s']:9.1f} {100 * r['pad_fraction']:6.1f} {100 * r['of_matmul']:11.1f} "
              f"{r['heldout_loss']:13.4f} {r['loadavg_before']:5.1f}")
    for prec, s in summary.items():
        gf = next(iter(s["pooled"].values()))["matmul_gflops"] if s["pooled"] else float("nan")
        print(f"{prec}: SmolLM2-shaped matmul ceiling {gf:.0f} GFLOPS (median of the measurements in this run)")
        for name, p in s["pooled"].items():
            print(f"  {name:18} useful {p['useful_tokens_per_s']:8.1f}/s  tokens {p['tokens_per_s']:8.1f}/s  "
                  f"of matmul {100 * p['of_matmul']:5.1f} %  held-out loss {p['heldout_loss']:.4f}")
        for peer, r in s["lab_over"].items():
            u, t = r["useful_tokens_per_s"], r["tokens_per_s"]
            print(f"  gpt4all-lab / {peer}: useful tokens/s x{u[0]:.2f} (95 % CI {u[1]:.2f}-{u[2]:.2f}), tokens/s "
                  f"x{t[0]:.2f} ({t[1]:.2f}-{t[2]:.2f}), held-out loss {100 * r['heldout_loss_rel_diff']:+.2f} %")
