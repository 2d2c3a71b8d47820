"""Every config group option composes and validates; typos and wrong types fail naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig

from gpt4all.core.config import CONF_PACKAGE, ConfigError, conf_dir, to_container, validate

STAGES = ["collect", "curate", "train", "quantize", "evaluate", "pipeline"]
# options whose required values (???) a user must give
REQUIRED = {
    ("teacher", "openai_compatible"): ["teacher.base_url=http://127.0.0.1:9/v1", "teacher.model=m"],
    ("data/source", "jsonl"): ["data.sources.jsonl.path=prompts.jsonl"],
    ("data/source", "p3_local"): ["data.sources.p3_local.path=p3.jsonl"],
    ("model", "hf"): ["model.pretrained=org/name"],
    ("data/pairs", "file"): ["data.pairs.path=pairs.jsonl"],
}


def group_options() -> list[tuple[str, str]]:
    out = []
    for yaml in sorted(conf_dir().rglob("*.yaml")):
        group = str(yaml.parent.relative_to(conf_dir()))
        if group != "." and group != "hydra":
            out.append((group, yaml.stem))
    return out


def compose_cfg(config_name: str, overrides: list[str]):
    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_every_group_has_options():
    groups = {g for g, _ in group_options()}
    assert {"data/source", "teacher", "curation", "model", "lora", "trainer", "quant", "eval", "logger", "paths",
            "experiment"} <= groups


@pytest.mark.parametrize("group,option", group_options(), ids=lambda v: str(v))
def test_option_composes_and_validates(group, option):
    value = f"[{option}]" if group == "data/source" else option
    cfg = compose_cfg("pipeline", [f"{group}={value}", *REQUIRED.get((group, option), [])])
    cfg = validate(cfg)
    resolved = to_container(cfg)  # every interpolation resolves
    assert resolved["stage"] == "pipeline"
    if group == "model":
        assert cfg.model.name == option


@pytest.mark.parametrize("stage", STAGES)
def test_stage_configs_share_the_tree(stage):
    cfg = validate(compose_cfg(stage, ["experiment=debug"]))
    assert cfg.stage == stage
    assert cfg.model.name == "tiny_random"  # the experiment applies whichever stage reads it
    assert cfg.hydra.job.name == stage


def test_sources_compose_into_a_mixture():
    cfg = compose_cfg("collect", ["data/source=[sample,p3_local]"])
    assert set(cfg.data.sources) == {"sample", "p3_local"}


def test_full_scale_preset_follows_the_paper():
    cfg = validate(compose_cfg("pipeline", ["experiment=gpt4all_lora_7b"]))
    assert cfg.model.name == "llama_7b" and cfg.teacher.name == "openai"
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (8, 32, 0.1)
    assert list(cfg.lora.target_modules) == ["q_proj", "v_proj"]
    assert cfg.train.lr == 5e-5 and cfg.trainer.max_epochs == 4 and cfg.trainer.strategy.stage == 2  # ZeRO-2
    assert "p3" not in cfg.data.sources


@pytest.mark.parametrize(
    "override,key",
    [("+lora.rank=8", "lora.rank"), ("lora.r=abc", "lora.r"), ("+model.template.promt=x", "model.template.promt"),
     ("teacher.temperature=hot", "teacher.temperature"), ("+curation.drop_dupes=true", "curation.drop_dupes")]
    + [("+seed2=1", "seed2"), ("seed=abc", "seed"), ("+logger.wandb.projet=x", "logger.wandb.projet"),
       ("+logger.tensorboard.dir=x", "logger.tensorboard"), ("+paths.out_dir=x", "paths.out_dir"),
       ("+trainer.max_epoch=3", "trainer.max_epoch"), ("+callbacks.checkpoint.every_n=3", "callbacks.checkpoint.every_n")],
)
def test_bad_key_or_type_names_the_key(override, key):
    cfg = compose_cfg("train", [override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_cli_typo_fails_naming_the_key(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "gpt4all.train", "lora.rank=8", f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "lora.rank" in proc.stderr
    assert not list(tmp_path.rglob("manifest.json"))


def test_every_subpackage_and_the_config_tree_ship_in_the_wheel():
    import tomllib

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[1]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(find_packages(str(root), include=["gpt4all*"])) <= set(tool["packages"])
    assert tool["package-dir"]["gpt4all.conf"] == "conf" and conf_dir().resolve() == (root / "conf").resolve()
