"""train: setup (data: a curate run or data.pairs; model, LoRA, trainer, callbacks) -> fit (or resume) -> save
(adapter, merged, card, manifest)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.cpu import BF16_FLAGS, cpu_flags
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.models import load_model, load_tokenizer, resolve_gguf
from gpt4all.core.pairs import load_pairs
from gpt4all.core.template import resolve_template
from gpt4all.core.tracking import Tracker
from gpt4all.train.card import model_card
from gpt4all.train.cpu import cpu_precision
from gpt4all.train.data import ChatDataModule
from gpt4all.train.module import LoRAModule, peft_config

log = logging.getLogger(__name__)


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return round(float(value), 5) if value is not None else None


def build_callbacks(cfg: DictConfig, run_dir: Path, has_logger: bool) -> list[L.Callback]:
    """Instantiate the `callbacks` dict (conf/callbacks/); checkpoints default to <run dir>/checkpoints."""
    nodes = cfg.get("callbacks") or {}
    out = []
    for name, node in nodes.items():
        if node is None:
            continue
        cb = instantiate(node)
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(run_dir / "checkpoints")
        if isinstance(cb, LearningRateMonitor) and not has_logger:
            log.info("callbacks.%s dropped: a learning-rate monitor needs a logger (logger=none)", name)
            continue
        out.append(cb)
    return out


def resume_path(resume: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume from: `last` (this run dir's last.ckpt, if any), a .ckpt, or a train run dir."""
    if not resume:
        return None
    if resume == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    p = Path(resume).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise FileNotFoundError(f"train.resume={resume}: no checkpoint at {p}")
    return str(p)


def training_data(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, Path, dict[str, Any] | None, dict[str, int]]:
    """(curate dir, dataset dir, pairs info, dropped rows by reason): train.data_dir, else the pairs of data.pairs
    (saved to <run dir>/data; rows with an empty prompt or response are dropped and counted), else the latest
    curate run."""
    if cfg.train.data_dir or not cfg.data.get("pairs"):
        curate_dir = Path(cfg.train.data_dir) if cfg.train.data_dir else latest_run(cfg.paths.output_dir, "curate")
        curate = read_manifest(curate_dir, "curate")
        return curate_dir, Path(curate["outputs"]["dataset"]), curate["inputs"].get("pairs"), {}
    pairs = load_pairs(cfg.data.pairs)
    dropped = pairs.drop_empty()
    if not len(pairs):
        raise ValueError(f"data.pairs {pairs.location}: every row has an empty prompt or response ({dropped})")
    dataset_dir = run_dir / "data"
    pairs.to_dataset().save_to_disk(str(dataset_dir))
    return None, dataset_dir, pairs.info(), dropped


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    peft_config(cfg.lora)  # a bad lora node, then an unreachable model, fail before the data and the model load
    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    template = resolve_template(cfg.model.template, tokenizer)
    curate_dir, dataset_dir, pairs, dropped = training_data(cfg, run_dir)
    t = cfg.train
    datamodule = ChatDataModule(
        dataset_dir, tokenizer, template, max_length=cfg.model.max_length, batch_size=t.batch_size,
        val_fraction=t.val_fraction, seed=cfg.seed, num_workers=t.num_workers, packing=t.packing,
        pack_length=t.pack_length, eval_guard=t.eval_guard.enabled, eval_guard_path=t.eval_guard.path,
        truncation=t.truncation,
    )
    datamodule.setup("fit")  # fail on bad data (or an eval-set leak) before loading the model
    module = LoRAModule(
        load_model(cfg.model, cfg.paths.cache_dir, seed=cfg.seed), cfg.lora, lr=t.lr, weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps, schedule=t.schedule, gradient_checkpointing=t.gradient_checkpointing,
    )
    loggers = tracker.lightning_loggers()
    callbacks = build_callbacks(cfg, run_dir, bool(loggers))
    precision = cfg.trainer.precision
    if precision == "auto":  # trainer=cpu: the faster precision for this CPU
        precision = cpu_precision(precision) if cfg.trainer.accelerator == "cpu" else "bf16-mixed"
        log.info("trainer.precision=auto -> %s (CPU bf16 flags: %s)", precision,
                 ", ".join(sorted(cpu_flags() & set(BF16_FLAGS))) or "none")
    trainer: L.Trainer = instantiate(
        cfg.trainer, precision=precision, logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    ckpt = resume_path(t.resume, run_dir)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    train_loss = _metric(trainer, "train/loss")  # before validate(), which resets the callback metrics
    if datamodule.num_val_examples and module.last_val_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # val_loss of the final weights

    metrics = {
        "train_loss": train_loss,
        "val_loss": _metric(trainer, "val/loss"),
        "steps": trainer.global_step,
        "train_examples": datamodule.num_train_examples,
        "val_examples": datamodule.num_val_examples,
        "tokens_seen": module.tokens_seen,
        "trainable_params": module.num_trainable_params,
        "precision": precision,
    }
    if not trainer.is_global_zero:  # other ranks of a data-parallel run leave the outputs to rank 0
        return metrics
    saved = module.save(run_dir, tokenizer)
    card = run_dir / "README.md"
    card.write_text(model_card(cfg, curate_dir, template, metrics, pairs))
    for d in saved.values():
        if d is not None:
            shutil.copy(card, d / "README.md")
    gguf_source = str(resolve_gguf(cfg.model.gguf_file, cfg.paths.cache_dir)) if cfg.model.source in ("gguf", "tiny_random") else None
    write_manifest(
        run_dir, "train", config_hash(cfg),
        inputs={
            "curate_dir": curate_dir, "dataset": dataset_dir, "pairs": pairs, "model": cfg.model.name,
            "template": template, "gguf_source": gguf_source, "resumed_from": ckpt,
        },
        outputs={"adapter": saved["adapter"], "merged": saved["merged"], "model_card": card,
                 "checkpoint": Path(ckpt_cb.last_model_path) if (ckpt_cb := _checkpoint(callbacks)) and
                 ckpt_cb.last_model_path else None},
        counts={"dropped": dropped} if dropped else None, metrics=metrics,
    )
    return {"adapter": str(saved["adapter"]), "merged": str(saved["merged"]), **metrics}


def _checkpoint(callbacks: list[L.Callback]) -> ModelCheckpoint | None:
    return next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
