"""Your own model and data: pairs files in any format (curate and train read them directly), `model=hf` on a local
dir, PEFT options set only in YAML, and a user's own config dir, all run from an unrelated folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from gpt4all.core.config import CONF_PACKAGE, ConfigError, validate
from gpt4all.core.pairs import PairsError, load_pairs

sys.path.insert(0, str(Path(__file__).parent))
from test_config import compose_cfg  # noqa: E402
from test_train_cli import wandb_records  # noqa: E402

# nomic-ai/gpt4all_prompt_generations' schema: prompt, response, source
RELEASED = [
    {"prompt": "What is the capital of France?", "response": "The capital of France is Paris.", "source": "unified_chip2"},
    {"prompt": "Name a primary color.", "response": "Red is a primary color.", "source": "unified_chip2"},
    {"prompt": "How do I reverse a list in Python?", "response": "Use my_list[::-1] or my_list.reverse().",
     "source": "stackoverflow"},
    {"prompt": "What is 2 + 2?", "response": "2 + 2 equals 4.", "source": "unified_chip2"},
    {"prompt": "Say hello.", "response": "", "source": "unified_chip2"},  # empty: curate drops it, train skips it
    {"prompt": "What color is the sky?", "response": "The sky is blue on a clear day.", "source": "unified_chip2"},
    {"prompt": "What is 2 + 2?", "response": "2 + 2 equals 4.", "source": "unified_chip2"},  # exact duplicate
    {"prompt": "How do I sort a dict by value?", "response": "sorted(d.items(), key=lambda kv: kv[1])",
     "source": "stackoverflow"},
]


def spec(**kw):
    base = {"path": None, "dataset": None, "config": None, "split": "train", "source": None, "limit": None,
            "fields": {"prompt": "prompt", "response": "response", "id": None, "source": None}}
    fields = kw.pop("fields", {})
    return OmegaConf.merge(base, kw, {"fields": fields})


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "gpt4all_prompt_generations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RELEASED))
    return path


def test_pairs_read_alike_from_jsonl_csv_parquet_and_datasets_dirs(released, tmp_path):
    jsonl = load_pairs(spec(path=str(released), fields={"source": "source"}))
    assert len(jsonl) == len(RELEASED) and jsonl.columns["source"][2] == "stackoverflow"
    assert jsonl.ids_made == len(RELEASED)  # no id field: ids made from the content
    assert jsonl.columns["id"][3] == jsonl.columns["id"][6]  # same content, same id
    frame = pd.DataFrame(RELEASED)
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    DatasetDict({"train": Dataset.from_pandas(frame)}).save_to_disk(str(tmp_path / "dsdir"))
    for path in ("p.csv", "p.parquet", "dsdir"):
        other = load_pairs(spec(path=str(tmp_path / path), fields={"source": "source"}))
        assert other.columns == jsonl.columns and other.digest == jsonl.digest, path
    # source: a constant, else the file name; the digest follows the content
    assert set(load_pairs(spec(path=str(released), source="released")).columns["source"]) == {"released"}
    named = load_pairs(spec(path=str(released)))
    assert set(named.columns["source"]) == {"gpt4all_prompt_generations"} and named.digest != jsonl.digest
    assert load_pairs(spec(path=str(released), limit=3)).info()["rows"] == 3


def test_a_missing_mapped_field_names_file_key_and_line(released, tmp_path):
    with pytest.raises(PairsError, match=rf"{released}:1: missing field 'question' \(data\.pairs\.fields\.prompt\)"):
        load_pairs(spec(path=str(released), fields={"prompt": "question"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RELEASED[0]) + "\n" + json.dumps({"prompt": "only a prompt"}) + "\n")
    with pytest.raises(PairsError, match=rf"{bad}:2: missing field 'response'"):
        load_pairs(spec(path=str(bad)))
    pd.DataFrame(RELEASED).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(PairsError, match=r"p\.parquet: no field 'origin' \(data\.pairs\.fields\.source\)"):
        load_pairs(spec(path=str(tmp_path / "p.parquet"), fields={"source": "origin"}))
    with pytest.raises(PairsError, match="no such file"):
        load_pairs(spec(path=str(tmp_path / "nope.jsonl")))


def test_an_unreachable_hub_dataset_fails_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PairsError, match="data.pairs.dataset=no-such-org/no-such-pairs"):
        load_pairs(spec(dataset="no-such-org/no-such-pairs"))


def test_curate_reads_pairs_in_the_released_schema(released, tmp_path):
    from gpt4all.core.tracking import run_stage
    from gpt4all.curate.stage import run

    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose("curate", overrides=[
            "data/pairs=file", f"data.pairs.path={released}", "data.pairs.fields.source=source", "logger=none",
            "curation.maps.enabled=false", "curation.diversity.enabled=false", f"paths.output_dir={tmp_path}",
        ], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    run_dir = tmp_path / "curate"
    result = run_stage("curate", cfg, run_dir, run)
    assert result["total"] == len(RELEASED) and result["kept"] == len(RELEASED) - 2
    funnel = json.loads((run_dir / "funnel.json").read_text())
    assert funnel["dropped"] == {"empty": 1, "exact_duplicate": 1}
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["drop_reason"] for r in rejects) == ["empty", "exact_duplicate"]
    assert {r["prompt"] for r in rejects} == {"Say hello.", "What is 2 + 2?"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    pairs = manifest["inputs"]["pairs"]
    assert pairs["name"] == released.name and pairs["digest"] == load_pairs(
        spec(path=str(released), fields={"source": "source"})).digest
    assert manifest["inputs"]["collect_dir"] is None
    assert set(result["kept_per_source"]) == {"unified_chip2", "stackoverflow"}


def test_peft_options_come_from_yaml_and_old_keys_name_their_new_spelling():
    cfg = validate(compose_cfg("train", ["+lora.use_dora=true", "lora.r=4"]))
    from gpt4all.train.module import peft_config

    built = peft_config(cfg.lora)
    assert built.use_dora is True and built.r == 4 and built.lora_alpha == 16
    assert peft_config(validate(compose_cfg("train", ["lora=none"])).lora) is None
    with pytest.raises(ConfigError, match=r"lora\.alpha' was renamed: use lora\.lora_alpha"):
        validate(compose_cfg("train", ["+lora.alpha=32"]))
    with pytest.raises(ConfigError, match=r"lora\.use_rslor'.*takes no 'use_rslor'"):
        validate(compose_cfg("train", ["+lora.use_rslor=true"]))
    with pytest.raises(ConfigError, match=r"lora\.use_rslora': expected bool"):
        validate(compose_cfg("train", ["+lora.use_rslora=maybe"]))


def test_an_unreachable_hub_model_fails_before_any_stage_runs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "gpt4all", "model=hf", "model.pretrained=no-such-org/no-such-model",
                           f"paths.output_dir={tmp_path}", "logger=none"], check=False, capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "model.pretrained=no-such-org/no-such-model" in proc.stderr
    assert not list(tmp_path.rglob("manifest.json"))  # collect never ran
    renamed = subprocess.run([sys.executable, "-m", "gpt4all.train", "lora.alpha=32"], check=False, capture_output=True,
                             text=True, env=env, timeout=120, cwd=tmp_path)
    assert renamed.returncode != 0 and "use lora.lora_alpha=32" in renamed.stderr


def test_model_hf_on_a_local_dir_trains_on_pairs_with_a_users_own_config_dir(released, tiny_model_dir, tmp_path):
    """From an unrelated folder: model=hf on a saved tiny Llama (licence from its card), the pairs file straight
    into train, and use_rslora set only in the user's own experiment YAML (--config-dir)."""
    model_dir = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n# my tiny model\n")
    conf = tmp_path / "my_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: hf\n\nlora:\n  use_rslora: true\n"
        "model:\n  max_length: 64\ntrain:\n  batch_size: 2\n  warmup_steps: 1\ntrainer:\n  max_steps: 2\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([
        sys.executable, "-m", "gpt4all.train", "--config-dir", str(conf), "experiment=mine",
        f"model.pretrained={model_dir}", "data/pairs=file", f"data.pairs.path={released}",
        "data.pairs.fields.source=source", "callbacks=none", f"hydra.run.dir={run_dir}",
    ], check=False, capture_output=True, text=True, env=env, timeout=400, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_rslora"] is True
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]  # PEFT's Llama default: none was set
    manifest = json.loads((run_dir / "manifest.json").read_text())
    pairs = manifest["inputs"]["pairs"]
    assert pairs["rows"] == len(RELEASED) and manifest["counts"]["dropped"] == {"empty_response": 1}
    assert manifest["metrics"]["train_examples"] + manifest["metrics"]["val_examples"] == len(RELEASED) - 1
    assert manifest["inputs"]["template"]["prompt"].startswith("<|im_start|>")  # the tokenizer's chat template
    card = (run_dir / "README.md").read_text()
    assert "Base model licence: mit" in card and pairs["digest"] in card
    # the run wrote only to its run dir (plus the stage cache's file-digest memo)
    assert not (cwd / "outputs").exists() or [p.name for p in (cwd / "outputs").iterdir()] == [".stage_cache"]
    assert pairs["digest"] in json.dumps(wandb_records(run_dir))  # the lora-model artifact names the dataset


def test_auto_template_is_text_for_a_tokenizer_without_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    from gpt4all.core.template import resolve_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    node = OmegaConf.create({"style": "auto", "system": None, "prompt": "### Prompt:\n{prompt}\n### Response:\n",
                             "response_suffix": "{eos}"})
    assert resolve_template(node, tok)["prompt"].startswith("<|im_start|>")
    tok.chat_template = None
    assert resolve_template(node, tok) == {"prompt": "### Prompt:\n{prompt}\n### Response:\n",
                                           "response_suffix": tok.eos_token}


def test_released_data_preset_trains_the_paper_recipe_on_the_release_without_collect():
    cfg = validate(compose_cfg("pipeline", ["experiment=gpt4all_lora_7b_released_data"]))
    assert cfg.data.pairs.dataset == "nomic-ai/gpt4all_prompt_generations" and cfg.data.pairs.fields.source == "source"
    assert list(cfg.pipeline.stages) == ["curate", "train", "quantize", "evaluate"]
    assert cfg.model.name == "llama_7b" and (cfg.lora.r, cfg.lora.lora_alpha) == (8, 32)


def test_a_local_source_without_its_path_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.sources\.p3_local\.path"):
        validate(compose_cfg("collect", ["data/source=[sample,p3_local]"]))


def test_the_pipeline_skips_collect_when_pairs_are_given(released):
    from gpt4all.pipeline import preflight

    cfg = validate(compose_cfg("pipeline", ["data/pairs=file", f"data.pairs.path={released}"]))
    assert preflight(cfg, list(cfg.pipeline.stages)) == ["curate", "train", "quantize", "evaluate"]
    plain = validate(compose_cfg("pipeline", []))
    assert preflight(plain, list(plain.pipeline.stages))[0] == "collect"


def test_a_changed_pairs_file_changes_the_stage_cache_key(tmp_path):
    from gpt4all.core.cache import key_of, key_parts

    def stage_key(cfg, stage):
        return key_of(key_parts(cfg, stage))

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(RELEASED[0]) + "\n")
    cfg = validate(compose_cfg("pipeline", ["data/pairs=file", f"data.pairs.path={path}"]))
    before = stage_key(cfg, "curate")
    assert stage_key(cfg, "curate") == before
    path.write_text("".join(json.dumps(r) + "\n" for r in RELEASED))
    assert stage_key(cfg, "curate") != before
