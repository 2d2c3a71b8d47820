"""Helpers for the collect tests: compose and run the collect stage (in-process or as `python -m gpt4all.collect`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig

from gpt4all.collect.stage import run
from gpt4all.core.config import CONF_PACKAGE
from gpt4all.core.tracking import run_stage

FAST = ["logger=none", "collect.progress=false", "teacher=openai_compatible", "teacher.model=fake",
        "teacher.backoff_initial_s=0.01", "teacher.backoff_max_s=0.05", "collect.batch.poll_interval_s=0.05"]


def overrides(out: Path, base_url: str, *extra: str) -> list[str]:
    return [*FAST, f"paths.output_dir={out}", f"teacher.base_url={base_url}", *extra]


def run_collect(out: Path, base_url: str, *extra: str, name: str = "run") -> dict[str, Any]:
    """Run the collect stage in-process, as gpt4all-collect would; returns its result, manifest and records."""
    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose(config_name="collect", overrides=overrides(out, base_url, *extra), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    run_dir = out / "collect" / name
    result = run_stage("collect", cfg, run_dir, run)
    return {"result": result, "dir": run_dir, **read_run(run_dir)}


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else None  # a dry run writes none
    path = run_dir / "responses.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {"manifest": manifest, "records": records}


def collect_cmd(out: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpt4all.collect", *overrides(out, base_url, *extra)]


def cli_env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def run_cli(out: Path, base_url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(collect_cmd(out, base_url, *extra), check=False, capture_output=True, text=True, env=cli_env(),
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
