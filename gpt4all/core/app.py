"""Hydra entry points: every stage and the pipeline is a Hydra app over the shared conf/ tree."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt4all.core.config import CONF_PATH, ConfigError, check_renamed
from gpt4all.core.tracking import StageFn, run_stage, sweep_group

Body = Callable[[DictConfig, Path, "str | None"], Any]


def hydra_app(config_name: str, body: Body) -> Callable[[], Any]:
    """A console-script `main` that composes conf/<config_name>.yaml and calls body(cfg, run_dir, wandb_group).

    Runs from any folder; `--config-dir DIR` (or `hydra.searchpath=[file://DIR]`) adds a user's own config
    groups, e.g. DIR/experiment/mine.yaml selected with `experiment=mine`.
    """

    @hydra.main(version_base="1.3", config_path=CONF_PATH, config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        for noisy in ("httpx", "httpx2", "httpcore", "openai"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return body(cfg, Path(HydraConfig.get().runtime.output_dir), sweep_group())  # a sweeper (optuna) reads it

    def entry(*args: Any) -> Any:
        if not args:  # a renamed key on the command line fails naming its new spelling (Hydra would say "not in struct")
            try:
                check_renamed(sys.argv[1:])
            except ConfigError as err:
                sys.exit(f"Error: {err}")
        return main(*args)

    return entry


def stage_app(stage: str, fn: StageFn) -> Callable[[], Any]:
    """The `main` of one stage: its run function inside a tracked run (see run_stage)."""
    return hydra_app(stage, lambda cfg, run_dir, group: run_stage(stage, cfg, run_dir, fn, group=group))
