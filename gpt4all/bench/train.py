"""`gpt4all-bench train`: gpt4all-lab's trainer vs Hugging Face Trainer + PEFT (the alpaca-lora recipe).

Same data, model (SmolLM2-135M), LoRA (r 8, alpha 16, dropout 0.05 on q_proj, v_proj), precision and machine,
in one process. The baseline pads each batch to its longest example (DataCollatorForSeq2Seq, multiple of 8, no
packing) and computes logits at every position; gpt4all-lab packs examples into rows of max_length tokens and
projects to the vocabulary only at response positions. By default each trainer runs one epoch over the same
examples. Prints s/step, tokens/s (real tokens processed, prompt and response), useful tokens/s (response
tokens, which carry the loss) and the share of the CPU ceiling (FACTS.md's, and this machine's matmul rate
measured in the same run), and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from gpt4all.core.config import conf_dir
from gpt4all.core.manifest import write_json
from gpt4all.core.metrics import count_label_tokens, tokens_per_second
from gpt4all.core.models import load_model, load_tokenizer
from gpt4all.core.template import encode_pair, resolve_template

LORA = {"_target_": "peft.LoraConfig", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"], "bias": "none"}
# LoRA costs about 4 x params FLOPs per token (0.54 GFLOP for 135M); bf16 matmuls reach about 2.7 TFLOPS and fp32
# about 375 GFLOPS on the reference 2-core machine (FACTS.md): the ceilings below, in tokens/s.
CEILING = {"bf16": 2.7e12 / 0.54e9, "fp32": 375e9 / 0.54e9}
FLOPS_PER_TOKEN = 0.54e9


def measured_matmul_flops(precision: str, seconds: float = 1.0) -> float:
    """FLOP/s of one SmolLM2-shaped matmul (2048 x 576 x 1536) on this machine, now: the ceiling that eager
    PyTorch can reach here (FACTS.md's bf16 figure assumes AMX; CPUs with AVX512-BF16 only reach about a third)."""
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


def summarize(name: str, times: list[float], tokens: list[int], useful: list[int], slots: list[int], warm: int,
              precision: str) -> dict[str, Any]:
    t, tok, use, sl = (sum(x[warm:]) for x in (times, tokens, useful, slots))
    steps = len(times) - warm
    return {"name": name, "steps": steps, "s_per_step": t / max(1, steps), "tokens_per_s": tokens_per_second(tok, t),
            "useful_tokens_per_s": tokens_per_second(use, t), "pad_fraction": 1 - tok / max(1, sl),
            "ceiling_fraction": tokens_per_second(tok, t) / CEILING[precision],
            "measured_ceiling_fraction": tokens_per_second(tok, t) * FLOPS_PER_TOKEN / measured_matmul_flops(precision)}


def run_baseline(model_cfg, cache: str, pairs, template, args) -> dict[str, Any]:
    """HF Trainer + PEFT as alpaca-lora trains: pad to the longest in the batch, full logits, no packing."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    tok = load_tokenizer(model_cfg, cache)
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    data = [dict(zip(("input_ids", "labels"), encode_pair(enc, template, p, r, args.max_length))) for p, r in pairs]
    for d in data:
        d["attention_mask"] = [1] * len(d["input_ids"])
    collator = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    seen: list[tuple[int, int, int]] = []

    def collate(features):
        batch = collator(features)
        seen.append((int(batch["attention_mask"].sum()), count_label_tokens(batch["labels"]), batch["input_ids"].numel()))
        return batch

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    model = get_peft_model(load_model(model_cfg, cache, seed=0), LoraConfig(
        task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
        target_modules=LORA["target_modules"], bias="none"))
    targs = TrainingArguments(
        output_dir=str(Path(args.tmp) / "hf"), per_device_train_batch_size=args.batch_size,
        max_steps=args.steps or -1, num_train_epochs=1,
        learning_rate=3e-4, warmup_steps=2, bf16=args.precision == "bf16", use_cpu=True, logging_steps=10**6,
        report_to=[], save_strategy="no", dataloader_num_workers=0, seed=0,
        disable_tqdm=True, remove_unused_columns=False,
    )
    Trainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[Timer()]).train()
    tokens, useful, slots = (list(x) for x in zip(*seen[: len(times)]))
    return summarize("hf_trainer_peft (alpaca-lora)", times, tokens, useful, slots, args.warmup, args.precision)


def run_lab(model_cfg, cache: str, pairs, template, args) -> dict[str, Any]:
    """gpt4all-lab: ChatDataModule (packing) + LoRAModule in a Lightning Trainer."""
    import lightning as L
    from datasets import Dataset

    from gpt4all.train.callbacks import Throughput
    from gpt4all.train.data import ChatDataModule
    from gpt4all.train.module import LoRAModule

    ds_dir = Path(args.tmp) / "dataset"
    Dataset.from_dict({"id": [str(i) for i in range(len(pairs))], "prompt": [p for p, _ in pairs],
                       "response": [r for _, r in pairs], "source": ["bench"] * len(pairs)}).save_to_disk(str(ds_dir))
    tok = load_tokenizer(model_cfg, cache)
    dm = ChatDataModule(ds_dir, tok, template, max_length=args.max_length, batch_size=args.lab_batch_size,
                        val_fraction=0.0, seed=0, packing=args.packing)
    module = LoRAModule(load_model(model_cfg, cache, seed=0), OmegaConf.create(LORA), lr=3e-4, warmup_steps=2)

    class Record(L.Callback):
        def __init__(self):
            self.rows: list[tuple[float, int, int, int]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.rows.append((time.perf_counter() - self.t, int(batch["token_mask"].sum()),
                              count_label_tokens(batch["labels"]), batch["input_ids"].numel()))

    rec = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.steps or -1, max_epochs=1,
                        precision="bf16-mixed" if args.precision == "bf16" else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Throughput(), rec], gradient_clip_val=1.0, use_distributed_sampler=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm)
    times, tokens, useful, slots = (list(x) for x in zip(*rec.rows))
    return summarize(f"gpt4all-lab ({args.packing})", times, tokens, useful, slots, args.warmup, args.precision)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="JSONL with prompt, response (e.g. gpteacher/codegen.jsonl)")
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--steps", type=int, default=0,
                    help="optimizer steps per trainer; 0: one epoch over --examples (both trainers see the same data)")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the averages")
    ap.add_argument("--batch-size", type=int, default=4, help="baseline examples per step")
    ap.add_argument("--lab-batch-size", type=int, default=2, help="gpt4all-lab rows per step (packed rows)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--packing", default="pack", choices=["pack", "group_by_length", "none"])
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/train.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_file():
        ap.error(f"--data {args.data}: no such file")
    model_cfg = OmegaConf.load(conf_dir() / "model" / "smollm2_135m.yaml")
    cache = OmegaConf.load(conf_dir() / "paths" / "default.yaml").cache_dir  # as the stages resolve it
    pairs = load_pairs(args.data, args.examples)
    template = resolve_template(model_cfg.template, load_tokenizer(model_cfg, cache))
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        results = [run_baseline(model_cfg, cache, pairs, template, args), run_lab(model_cfg, cache, pairs, template, args)]
    base, lab = results
    ratios = {"useful_tokens_per_s": lab["useful_tokens_per_s"] / base["useful_tokens_per_s"],
              "tokens_per_s": lab["tokens_per_s"] / base["tokens_per_s"]}
    print(f"{'trainer':34} {'s/step':>7} {'tokens/s':>9} {'useful/s':>9} {'pad %':>6} {'ceiling %':>9} "
          f"{'of matmul %':>11}")
    for r in results:
        print(f"{r['name']:34} {r['s_per_step']:7.2f} {r['tokens_per_s']:9.1f} {r['useful_tokens_per_s']:9.1f} "
              f"{100 * r['pad_fraction']:6.1f} {100 * r['ceiling_fraction']:9.1f} "
              f"{100 * r['measured_ceiling_fraction']:11.1f}")
    print("ceiling %: of FACTS.md's ceiling; of matmul %: of this machine's SmolLM2-shaped matmul, measured "
          "after each trainer (4 x params FLOPs per token)")
    print(f"gpt4all-lab / baseline: useful tokens/s x{ratios['useful_tokens_per_s']:.2f} (goal >= 2), "
          f"tokens/s x{ratios['tokens_per_s']:.2f} (goal >= 0.95)")
    write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items() if k != "tmp"}, "results": results,
                          "ratios": ratios, "machine": {"cpu": platform.processor(), "threads": torch.get_num_threads(),
                                                        "torch": torch.__version__},
                          "ceiling_tokens_per_s": CEILING[args.precision]})
    print(f"wrote {args.out}")
    return 0 if ratios["useful_tokens_per_s"] >= 2 and ratios["tokens_per_s"] >= 0.95 else 1
