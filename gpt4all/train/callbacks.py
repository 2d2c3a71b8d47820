"""Lightning callbacks of the train stage (conf/callbacks/): throughput and a table of answers to fixed prompts."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import lightning as L
import torch

from gpt4all.core.metrics import count_label_tokens, tokens_per_second
from gpt4all.core.template import render_prompt

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Per training batch: `train/tokens_per_s` (every real token processed, prompt and response, no padding),
    `train/useful_tokens_per_s` (response tokens that carry loss), `train/s_per_batch` and `train/pad_fraction`.

    Times run from batch start to batch end (forward, backward and, on stepping batches, the optimizer). Under
    data parallelism the numbers are per rank. Totals are kept in `totals` for benchmarks.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self.totals = {"batches": 0, "seconds": 0.0, "tokens": 0, "useful_tokens": 0, "slots": 0}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        tokens = int(batch["token_mask"].sum())
        useful = count_label_tokens(batch["labels"])
        slots = batch["input_ids"].numel()
        for k, v in (("batches", 1), ("seconds", seconds), ("tokens", tokens), ("useful_tokens", useful),
                     ("slots", slots)):
            self.totals[k] += v
        n = batch["input_ids"].shape[0]
        for key, value in (
            ("train/tokens_per_s", tokens_per_second(tokens, seconds)),
            ("train/useful_tokens_per_s", tokens_per_second(useful, seconds)),
            ("train/s_per_batch", seconds),
            ("train/pad_fraction", 1.0 - tokens / max(1, slots)),
        ):
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=n)


class GenerationTable(L.Callback):
    """After each validation, greedy answers to fixed prompts, logged as a W&B table `train/generations`
    (columns step, prompt, answer; one table per validation, so W&B shows how answers change).

    Uses the data module's tokenizer and resolved template. Every rank generates (ZeRO-3 needs all ranks in each
    forward); rank 0 logs. Answers are also kept in `rows`.
    """

    def __init__(self, prompts: Sequence[str] = (), max_new_tokens: int = 48) -> None:
        self.prompts, self.max_new_tokens = [str(p) for p in prompts], int(max_new_tokens)
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        dm = trainer.datamodule
        rows = [{"step": trainer.global_step, "prompt": p, "answer": self.answer(pl_module, dm.tokenizer, dm.template, p)}
                for p in self.prompts]
        self.rows += rows
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                if hasattr(lg, "log_table"):
                    lg.log_table("train/generations", columns=list(rows[0]), data=[list(r.values()) for r in rows],
                                 step=trainer.global_step)

    @torch.no_grad()
    def answer(self, pl_module: L.LightningModule, tokenizer: Any, template: Any, prompt: str) -> str:
        model = pl_module.model
        ids = tokenizer.encode(render_prompt(template, prompt), add_special_tokens=False)
        input_ids = torch.tensor([ids], device=pl_module.device)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.max_new_tokens,
                do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        finally:
            model.train(was_training)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
