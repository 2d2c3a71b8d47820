"""train: setup (data, model, LoRA, trainer) -> run (fit) -> save (adapter, merged model, manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.models import load_model, load_tokenizer, resolve_gguf
from gpt4all.core.tracking import Tracker
from gpt4all.train.data import ChatDataModule
from gpt4all.train.module import LoRAModule


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return round(float(value), 5) if value is not None else None


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    curate_dir = Path(cfg.train.data_dir) if cfg.train.data_dir else latest_run(cfg.paths.output_dir, "curate")
    dataset_dir = read_manifest(curate_dir, "curate")["outputs"]["dataset"]
    L.seed_everything(cfg.seed, workers=True)

    tokenizer = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    datamodule = ChatDataModule(
        dataset_dir, tokenizer, cfg.model.template, max_length=cfg.model.max_length,
        batch_size=cfg.train.batch_size, val_fraction=cfg.train.val_fraction, seed=cfg.seed,
        num_workers=cfg.train.num_workers,
    )
    module = LoRAModule(
        load_model(cfg.model, cfg.paths.cache_dir, seed=cfg.seed), cfg.lora,
        lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, warmup_steps=cfg.train.warmup_steps,
    )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=tracker.lightning_loggers() or False, default_root_dir=str(run_dir))
    trainer.fit(module, datamodule=datamodule)

    saved = module.save(run_dir, tokenizer)
    metrics = {
        "train_loss": _metric(trainer, "train/loss"),
        "val_loss": _metric(trainer, "val/loss"),
        "steps": trainer.global_step,
        "train_examples": datamodule.num_train_examples,
        "val_examples": datamodule.num_val_examples,
    }
    gguf_source = str(resolve_gguf(cfg.model.gguf_file)) if cfg.model.source in ("gguf", "tiny_random") else None
    write_manifest(
        run_dir, "train", config_hash(cfg),
        inputs={
            "curate_dir": curate_dir, "dataset": dataset_dir, "model": cfg.model.name,
            "template": OmegaConf.to_container(cfg.model.template), "gguf_source": gguf_source,
        },
        outputs={"adapter": saved["adapter"], "merged": saved["merged"]},
        metrics=metrics,
    )
    return {"adapter": str(saved["adapter"]), "merged": str(saved["merged"]), **metrics}
