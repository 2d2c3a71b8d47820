"""Finetuning a causal LM as a LightningModule: a PEFT LoRA adapter on a frozen base, or every weight (lora=none)."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from gpt4all.core.config import ConfigError
from gpt4all.core.metrics import count_label_tokens
from gpt4all.core.template import IGNORE_INDEX
from gpt4all.train.attention import PACKED_SDPA, use_packed_attention
from gpt4all.train.batching import padding_free
from gpt4all.train.cpu import use_cpu_dropout
from gpt4all.train.loss import linear_cross_entropy

log = logging.getLogger(__name__)

SCHEDULES = ("linear", "cosine", "constant")


def lr_factor(step: int, warmup_steps: int, total_steps: float, schedule: str = "linear") -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup, then linear or cosine decay
    towards 0 at `total_steps`, or constant (also when total_steps is unknown/infinite)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or not math.isfinite(total_steps) or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def peft_config(lora: Any) -> PeftConfig | None:
    """The PEFT config a `lora` node builds through its `_target_` (peft.LoraConfig and any of its fields:
    use_rslora, use_dora, rank_pattern, ...); None when `lora.enabled` is false (lora=none, full finetune).
    Plain dicts work too. A bad value fails here, naming the node, before the model is loaded."""
    node = OmegaConf.to_container(lora, resolve=True) if OmegaConf.is_config(lora) else dict(lora)
    if not node.pop("enabled", True):
        return None
    if "_target_" not in node:
        raise ConfigError("'lora' needs a _target_ (e.g. peft.LoraConfig) or enabled: false (lora=none)")
    node.setdefault("_convert_", "all")  # lists and dicts reach PEFT as plain Python (it serialises them)
    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - Hydra wraps the config class's own TypeError/ValueError
        raise ConfigError(f"invalid config at 'lora' ({node['_target_']}): {err.__cause__ or err}") from None


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _split_head(model: torch.nn.Module) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a plain causal LM whose logits are `lm_head(last hidden state)` (a Linear without
    bias), else None."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    cfg = getattr(base, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    ok = decoder is not None and isinstance(head, torch.nn.Linear) and head.bias is None
    return (decoder, head) if ok else None


class LoRAModule(L.LightningModule):
    """Wraps a base causal LM with a LoRA adapter (only the adapter trains), or trains it whole (`lora.enabled`
    false). AdamW with warmup + linear/cosine/constant schedule; clipping, accumulation and precision are Trainer
    settings.

    The loss is token-weighted: the sum of the cross-entropies of all response tokens (labels not IGNORE_INDEX)
    of an optimizer step, over every accumulated micro-batch and every rank, divided by their number; the same
    for `val/loss` over the whole validation set. `accumulate_grad_batches` and the device count therefore
    leave the objective unchanged. The vocabulary projection
    runs only on those positions: the prompt and padding never pay for the widest matmul of a small model and its
    softmax (the same loss as `model(labels=...)`, which the fallback uses for models with logit scaling); on a
    CPU it runs in row chunks (`linear_cross_entropy`), and training on a CPU (`on_fit_start`) switches to
    per-example attention over packed rows (gpt4all/train/attention.py), whose batches then run padding-free.
    Logs per step: `train/loss`, `train/tokens` (loss tokens in the batch), `train/tokens_seen` (running total,
    kept across resumes) and `lr`; per validation: `val/loss`. Checkpoints hold only the trainable weights.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        lora: Any,
        lr: float,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: str = "linear",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
        self.save_hyperparameters(ignore=["model", "lora"])
        # plain data, so checkpoints load with torch.load(weights_only=True)
        self.hparams["lora"] = OmegaConf.to_container(lora, resolve=True) if OmegaConf.is_config(lora) else dict(lora)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.warmup_steps, self.schedule = int(warmup_steps), schedule
        adapter = peft_config(lora)
        self.use_lora = adapter is not None
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24; the old name is deprecated
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.use_lora:
            try:
                self.model = get_peft_model(model, adapter)
            except ValueError as err:  # e.g. no default target modules known for this architecture
                raise ConfigError(f"lora ({type(adapter).__name__}) on {type(model).__name__}: {err} "
                                  f"(set lora.target_modules=[...])") from None
        else:
            self.model = model
        use_cpu_dropout(self.model)
        self.model.train()  # from_pretrained gives eval mode and Lightning does not change it
        self.strict_loading = not self.use_lora  # LoRA checkpoints carry the adapter only
        self._split = _split_head(self.model)
        self.num_trainable_params, self.num_total_params = count_params(self.model)
        self.hparams["trainable_params"] = self.num_trainable_params
        self.hparams["total_params"] = self.num_total_params
        log.info(
            "%s: %d trainable of %d parameters (%.3f %%)",
            f"{type(adapter).__name__} r={getattr(adapter, 'r', '-')} on {sorted(getattr(adapter, 'target_modules', None) or [])}"
            if self.use_lora else "full finetune",
            self.num_trainable_params, self.num_total_params,
            100.0 * self.num_trainable_params / max(1, self.num_total_params),
        )
        self.tokens_seen = 0
        self.last_val_step: int | None = None  # global step of the latest validation
        self.token_weighted = True  # off under DeepSpeed, whose engine scales and steps itself (on_fit_start)
        self._step_sums = torch.zeros(2, dtype=torch.float64)  # (loss sum, label tokens) of the optimizer step
        self._val_sums = torch.zeros(2, dtype=torch.float64)   # the same over the validation set

    @staticmethod
    def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask"),
                "position_ids": batch.get("position_ids"), "use_cache": False}

    def model_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch as the model runs it: with per-example attention (on a CPU), a packed batch becomes one row
        without padding (`padding_free`), since the rows only added padding."""
        if getattr(self.model.config, "_attn_implementation", None) == PACKED_SDPA:
            return padding_free(batch)
        return batch

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          labels=labels, use_cache=False)

    def loss(self, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy over the labelled (response) tokens of the batch: their mean, or their sum
        (`reduction="sum"`)."""
        batch = self.model_batch(batch)
        if self._split is None:
            loss = self.model(**self.model_inputs(batch), labels=batch["labels"]).loss  # HF: the mean
            return loss * count_label_tokens(batch["labels"]) if reduction == "sum" else loss
        decoder, head = self._split
        hidden = decoder(**self.model_inputs(batch)).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        if not keep.any():
            return hidden.sum() * 0.0
        hidden, targets = hidden[:, :-1][keep], targets[keep]
        if hidden.device.type == "cpu":  # in row chunks: no [tokens, vocab] tensors to allocate (train/loss.py)
            return linear_cross_entropy(hidden, head.weight, targets, reduction=reduction)
        # accelerators: through the head module, whose hooks sharding strategies (ZeRO-3, FSDP) rely on
        return F.cross_entropy(head(hidden).float(), targets, reduction=reduction)

    # -- training ----------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        """The sum of the micro-batch's token losses; `on_before_optimizer_step` divides the step's gradient by
        the label tokens of the whole step (every micro-batch of the accumulation, every rank)."""
        tokens = count_label_tokens(batch["labels"])
        self.tokens_seen += tokens
        n = batch["input_ids"].shape[0]
        self.log("train/tokens", float(tokens), on_step=True, on_epoch=False, reduce_fx="sum", batch_size=n)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False, batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)
        if not self.token_weighted:
            loss = self.loss(batch)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
            return loss
        loss_sum = self.loss(batch, reduction="sum")
        self._step_sums = self._add(self._step_sums, loss_sum, tokens)
        return loss_sum

    @staticmethod
    def _add(sums: torch.Tensor, loss_sum: torch.Tensor, tokens: int) -> torch.Tensor:
        """(loss sum, tokens) += (loss_sum, tokens), on the loss's device (no host sync per micro-batch)."""
        sums = sums.to(loss_sum.device)
        sums[0] += loss_sum.detach().to(sums.dtype)
        sums[1] += tokens
        return sums

    def on_before_optimizer_step(self, optimizer) -> None:
        """Token-weighted step: Lightning divided each micro-batch's loss by `accumulate_grad_batches` and the
        data-parallel strategy averaged gradients over ranks, so the gradient of the step's mean token loss is
        the accumulated gradient times accumulate_grad_batches x world_size / (label tokens of the step)."""
        if not self.token_weighted:
            return
        loss_sum, tokens = self.trainer.strategy.reduce(self._step_sums.to(self.device), reduce_op="sum").tolist()
        self._step_sums.zero_()
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / max(tokens, 1.0)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        self.log("train/loss", loss_sum / max(tokens, 1.0), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=1)

    def validation_step(self, batch, batch_idx):
        loss_sum = self.loss(batch, reduction="sum")
        self._val_sums = self._add(self._val_sums, loss_sum, count_label_tokens(batch["labels"]))
        return loss_sum

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()

    def on_validation_epoch_end(self) -> None:
        """`val/loss`: the token-weighted mean over the whole validation set, summed over ranks first."""
        loss_sum, tokens = self.trainer.strategy.reduce(self._val_sums.to(self.device), reduce_op="sum").tolist()
        if tokens > 0:
            self.log("val/loss", loss_sum / tokens, prog_bar=True, on_step=False, on_epoch=True, batch_size=1)
        if not self.trainer.sanity_checking:
            self.last_val_step = self.trainer.global_step

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else math.inf
        warmup, schedule = self.warmup_steps, self.schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total, schedule)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_fit_start(self) -> None:
        if type(getattr(self._trainer, "strategy", None)).__name__.startswith("DeepSpeed"):
            self.token_weighted = False
            log.warning("DeepSpeed: the loss is the mean of each micro-batch (not token-weighted across "
                        "accumulation and ranks)")
        # on CPU, per-example attention beats SDPA with a block-diagonal mask (experiments/train_throughput);
        # on GPUs transformers' masked SDPA / flash-attention handles packed rows in one kernel
        if self.device.type == "cpu" and use_packed_attention(self.model):
            log.info("attention: %s (causal attention per packed example)", PACKED_SDPA)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        if self.use_lora:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))

    # -- export --------------------------------------------------------------------------------------------
    def save(self, out_dir: Path, tokenizer: Any) -> dict[str, Path | None]:
        """Write the PEFT adapter to out_dir/adapter (LoRA only) and the merged model + tokenizer to
        out_dir/merged. The merge happens on a copy, so this module can keep training afterwards."""
        out_dir = Path(out_dir)
        adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"
        if self.use_lora:
            self.model.save_pretrained(str(adapter_dir), safe_serialization=True)
            tokenizer.save_pretrained(str(adapter_dir))
            merged = copy.deepcopy(self.model).merge_and_unload()
        else:
            merged = self.model
        was_training = merged.training
        merged.eval()
        merged.save_pretrained(str(merged_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(merged_dir))
        merged.train(was_training)
        log.info("saved %smerged model to %s", f"adapter to {adapter_dir} and " if self.use_lora else "", merged_dir)
        return {"adapter": adapter_dir if self.use_lora else None, "merged": merged_dir}
