"""LoRA finetuning of a causal LM as a LightningModule (PEFT adapter on a frozen base)."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel

from gpt4all.core.metrics import count_label_tokens, tokens_per_second

log = logging.getLogger(__name__)

SCHEDULES = ("linear", "constant")


def lr_factor(step: int, warmup_steps: int, total_steps: float, schedule: str = "linear") -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup, then constant or linear
    decay towards 0 at `total_steps` (constant when total_steps is unknown/infinite)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or not math.isfinite(total_steps) or total_steps <= warmup_steps:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def lora_config(lora: Any) -> LoraConfig:
    """A PEFT LoraConfig from a `lora` config node (r, alpha, dropout, target_modules, bias)."""
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=[str(m) for m in lora.target_modules],
        bias=str(lora.bias),
    )


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


class LoRAModule(L.LightningModule):
    """Wraps a base causal LM with a LoRA adapter; only the adapter trains.

    Logs per step: `train/loss` (progress bar), `train/tokens` (loss-carrying response tokens in the batch),
    `train/tokens_seen` (running total), `train/tokens_per_s` (batch tokens over the wall time of the step,
    forward + backward + optimizer) and `lr`; per validation epoch: `val/loss`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        lora: Any,
        lr: float,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: str = "linear",
    ):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
        self.save_hyperparameters(ignore=["model"])
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.model = get_peft_model(model, lora_config(lora))
        self.model.train()  # from_pretrained gives eval mode and Lightning does not change it
        self.num_trainable_params, self.num_total_params = count_params(self.model)
        self.hparams["trainable_params"] = self.num_trainable_params
        self.hparams["total_params"] = self.num_total_params
        log.info(
            "LoRA r=%s on %s: %d trainable of %d parameters (%.3f %%)",
            lora.r, list(lora.target_modules), self.num_trainable_params, self.num_total_params,
            100.0 * self.num_trainable_params / max(1, self.num_total_params),
        )
        self.tokens_seen = 0
        self._step_start: float | None = None
        self._batch_tokens = 0

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    # -- training ----------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch, batch_idx):
        out = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        n = batch["input_ids"].shape[0]
        self._batch_tokens = count_label_tokens(batch["labels"])
        self.tokens_seen += self._batch_tokens
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/tokens", float(self._batch_tokens), on_step=True, on_epoch=False, reduce_fx="sum", batch_size=n)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False, batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)
        return out.loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._step_start is None:
            return
        seconds = time.perf_counter() - self._step_start
        self.log(
            "train/tokens_per_s", tokens_per_second(self._batch_tokens, seconds),
            on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0],
        )

    def validation_step(self, batch, batch_idx):
        out = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        self.log("val/loss", out.loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        return out.loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else math.inf
        warmup, schedule = self.warmup_steps, self.schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # -- export --------------------------------------------------------------------------------------------
    def save(self, out_dir: Path, tokenizer: Any) -> dict[str, Path]:
        """Write the PEFT adapter to out_dir/adapter and the merged model + tokenizer to out_dir/merged.

        The merge happens on a copy, so this module can keep training afterwards.
        """
        out_dir = Path(out_dir)
        adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"
        self.model.save_pretrained(str(adapter_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(adapter_dir))
        merged = copy.deepcopy(self.model).merge_and_unload()
        merged.eval()
        merged.save_pretrained(str(merged_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(merged_dir))
        del merged
        log.info("saved adapter to %s and merged model to %s", adapter_dir, merged_dir)
        return {"adapter": adapter_dir, "merged": merged_dir}
