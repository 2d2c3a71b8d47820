"""`gpt4all-train` as a user runs it: outputs and model card, resume, a multirun sweep sharing a W&B group, an
Optuna search, DDP over 2 CPU processes on gloo, and the scale-out strategy configs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from datasets import Dataset
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gpt4all.core.config import to_container, validate
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.models import load_model

sys.path.insert(0, str(Path(__file__).parent))
from test_config import compose_cfg  # noqa: E402
from test_train import PAIRS  # noqa: E402

FAST = ["model=tiny_random", "model.max_length=64", "train.batch_size=2", "train.warmup_steps=1", "train.lr=1e-3",
        "callbacks.generation.max_new_tokens=4", "callbacks.checkpoint.every_n_train_steps=2"]


@pytest.fixture(scope="module")
def curate_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("curate")
    pairs = PAIRS * 2
    Dataset.from_dict({"id": [f"r{i}" for i in range(len(pairs))], "prompt": [p for p, _ in pairs],
                       "response": [r for _, r in pairs], "source": ["test"] * len(pairs)}).save_to_disk(str(d / "dataset"))
    write_manifest(d, "curate", "test", inputs={"collect_dir": None}, outputs={"dataset": d / "dataset"},
                   counts={"kept": len(pairs)})
    return d


def train_cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "gpt4all.train", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def wandb_records(run_dir: Path) -> list[dict]:
    (run,) = list((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run([str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(run)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first_run(curate_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    run_dir = out / "run1"
    train_cli([*FAST, f"train.data_dir={curate_dir}", f"paths.output_dir={out}", f"hydra.run.dir={run_dir}",
               "train.packing=pack", "trainer.max_steps=4", "trainer.val_check_interval=2"])
    return run_dir


def test_outputs_load_and_card_names_the_terms(first_run, curate_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = read_manifest(first_run, "train")
    assert m["metrics"]["steps"] == 4 and m["metrics"]["val_loss"] > 0 and m["metrics"]["tokens_seen"] > 0
    assert m["inputs"]["template"]["prompt"].endswith("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    merged = AutoModelForCausalLM.from_pretrained(m["outputs"]["merged"]).eval()
    assert merged.config.num_hidden_layers == 2
    cfg = OmegaConf.load(first_run / ".hydra" / "config.yaml")  # the run's own base: tiny_random at its seed
    base = load_model(cfg.model, cfg.paths.cache_dir, seed=cfg.seed).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, m["outputs"]["adapter"]).eval()
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)  # base + adapter == merged
    assert not torch.allclose(base_logits, merged(ids).logits, atol=1e-6)  # and the adapter changed the base
    card = (first_run / "README.md").read_text()
    for needle in ("Use considerations", "Base model licence", "SmolLM2", "Teacher", "val_loss", '"kept": 24',
                   "r: 8", "Self-Instruct"):
        assert needle in card, needle
    assert (Path(m["outputs"]["merged"]) / "README.md").read_text() == card
    assert Path(m["outputs"]["checkpoint"]).name == "last.ckpt"


def test_wandb_run_holds_throughput_and_generations(first_run):
    records = wandb_records(first_run)
    history = [r for r in records if r.get("type") == "history"]
    keys = {k for r in history for k in r["history"]["item"]}
    for key in ("train/useful_tokens_per_s", "train/tokens_per_s", "lr-AdamW", "val/loss"):
        assert key in keys, sorted(keys)
    tables = list((first_run / "wandb").rglob("media/table/**/*.table.json"))
    assert len(tables) == 2  # one per validation (steps 2 and 4)
    data = json.loads(tables[0].read_text())
    assert data["columns"] == ["step", "prompt", "answer"] and len(data["data"]) == 3


def test_cli_resume_continues_at_the_checkpointed_step(first_run, curate_dir, tmp_path):
    run_dir = tmp_path / "run2"
    train_cli([*FAST, f"train.data_dir={curate_dir}", f"paths.output_dir={tmp_path}", f"hydra.run.dir={run_dir}",
               "train.packing=pack", "trainer.max_steps=6", f"train.resume={first_run}", "logger=none"])
    m = read_manifest(run_dir, "train")
    assert m["metrics"]["steps"] == 6 and m["inputs"]["resumed_from"] == str(first_run / "checkpoints" / "last.ckpt")
    assert m["metrics"]["tokens_seen"] > read_manifest(first_run, "train")["metrics"]["tokens_seen"]


def test_multirun_sweep_shares_a_wandb_group(curate_dir, tmp_path):
    proc = train_cli(["-m", *FAST, "lora.r=4,8", f"train.data_dir={curate_dir}", f"paths.output_dir={tmp_path}",
                      f"paths.root_dir={tmp_path}", "trainer.max_steps=2", "~callbacks.generation"])
    (sweep,) = list((tmp_path / "multirun").iterdir())
    groups, ranks = set(), []
    for job in ("0", "1"):
        m = read_manifest(sweep / job, "train")
        assert m["metrics"]["steps"] == 2
        ranks.append(json.loads((Path(m["outputs"]["adapter"]) / "adapter_config.json").read_text())["r"])
        run = next(r["run"] for r in wandb_records(sweep / job) if r.get("type") == "run")
        groups.add(run["run_group"])
    assert ranks == [4, 8] and groups == {f"sweep-{sweep.name}"}, proc.stdout[-2000:]


def test_optuna_search_minimises_val_loss(curate_dir, tmp_path):
    train_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", *FAST,
               f"train.data_dir={curate_dir}", f"paths.output_dir={tmp_path}", f"paths.root_dir={tmp_path}",
               "trainer.max_steps=2", "logger=none", "~callbacks.generation", "~callbacks.checkpoint"])
    (sweep,) = list((tmp_path / "multirun").iterdir())
    result = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in result and "lora.r" in result
    losses = [read_manifest(sweep / j, "train")["metrics"]["val_loss"] for j in ("0", "1")]
    assert min(losses) == pytest.approx(float(result.split("best_value:")[1].split()[0]), rel=1e-4)


def test_ddp_two_cpu_processes_on_gloo(curate_dir, tmp_path):
    """trainer=ddp_cpu: 2 processes; each rank reads its own half of the data, rank 0 saves."""
    run_dir = tmp_path / "ddp"
    train_cli([*FAST, "trainer=ddp_cpu", f"train.data_dir={curate_dir}", f"paths.output_dir={tmp_path}",
                      f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", "logger=none", "~callbacks.generation",
                      "train.val_fraction=0.25"])
    m = read_manifest(run_dir, "train")
    # 18 train examples, 2 per batch, 2 ranks: 5 steps an epoch (ceil(9 / 2)), not 9 as on one process
    assert m["metrics"]["train_examples"] == 18 and m["metrics"]["steps"] == 5


@pytest.mark.parametrize("option", ["ddp", "ddp_cpu", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3", "multinode"])
def test_scale_out_trainer_configs_instantiate(option):
    cfg = compose_cfg("train", [f"trainer={option}"])
    node = to_container(cfg)["trainer"]
    trainer_args = set(inspect.signature(L.Trainer).parameters)
    assert set(node) - {"_target_", "strategy"} <= trainer_args
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ in {"DDPStrategy", "FSDPStrategy", "DeepSpeedStrategy"}
    if "deepspeed" in option or option == "multinode":
        assert strategy.config["zero_optimization"]["stage"] == (3 if option.endswith("3") else 2)


def test_paper_preset_and_launcher_compose():
    cfg = validate(compose_cfg("train", ["experiment=gpt4all_lora_7b", "hydra/launcher=slurm"]))
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout, list(cfg.lora.target_modules)) == (8, 32, 0.1, ["q_proj", "v_proj"])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.warmup_steps, cfg.train.weight_decay) == (5e-5, 4, 100, 0.0)
    assert (cfg.model.max_length, cfg.seed, cfg.trainer.max_epochs, cfg.trainer.devices) == (1024, 42, 4, 8)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy.stage == 2
    assert (cfg.model.template.prompt, cfg.model.template.response_suffix) == ("{prompt}\n", "{eos}")
    assert cfg.train.val_fraction == 0.05 and cfg.train.packing == "none"
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert torch.__version__.startswith("2.13")  # nothing in the cluster extras replaced the CPU torch
