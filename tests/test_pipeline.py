"""End to end: `gpt4all-pipeline experiment=debug` against a real llama.cpp server, read back from disk and W&B."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt4all.core.manifest import read_manifest
from gpt4all.quantize.gguf import generate

FAKE_KEY = "sk-gpt4all-lab-test-FAKE-0123456789abcdef"
STAGES = ["collect", "curate", "train", "quantize", "evaluate"]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "WANDB_MODE": "offline"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gpt4all.pipeline", "experiment=debug", f"paths.output_dir={out}",
         "teacher.api_key_env=OPENAI_API_KEY"],  # the key is really sent, so it could leak
        capture_output=True, text=True, env=env, timeout=600,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = list((out / "pipeline").iterdir())
    return {"dir": run_dir, "out": out, "seconds": elapsed, "stdout": proc.stdout, "stderr": proc.stderr}


def wandb_run(stage_dir: Path) -> dict:
    (run,) = list((stage_dir / "wandb").glob("offline-run-*"))
    wandb = Path(sys.executable).with_name("wandb")
    proc = subprocess.run([str(wandb), "leet", "inspect", "--summary", "--json", str(run)],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


def test_summary_names_every_artifact(pipeline_run):
    summary = json.loads((pipeline_run["dir"] / "summary.json").read_text())
    assert list(summary["stages"]) == STAGES
    s = summary["stages"]
    assert s["collect"]["answered"] + s["collect"]["failed"] == s["collect"]["prompts"] == 10
    assert s["curate"]["kept"] == sum(s["curate"]["kept_per_source"].values()) > 0
    assert s["train"]["steps"] == 4 and s["train"]["train_loss"] > 0
    assert Path(s["quantize"]["gguf"]).is_file() and s["quantize"]["gguf_mb"] > 0
    assert set(s["evaluate"]["median_perplexity"]) == {"base:tiny_random", "finetuned", "finetuned-q4_0"}
    for stage in STAGES:
        assert read_manifest(pipeline_run["dir"] / stage, stage)["config_hash"]
    assert "median_perplexity" in pipeline_run["stdout"]  # the printed table


def test_stages_chain_through_their_run_dirs(pipeline_run):
    d = pipeline_run["dir"]
    assert read_manifest(d / "curate", "curate")["inputs"]["collect_dir"] == str(d / "collect")
    assert read_manifest(d / "train", "train")["inputs"]["curate_dir"] == str(d / "curate")
    assert read_manifest(d / "quantize", "quantize")["inputs"]["train_dir"] == str(d / "train")
    n_kept = json.loads((d / "curate" / "funnel.json").read_text())["kept"]
    train = read_manifest(d / "train", "train")["metrics"]
    assert train["train_examples"] + train["val_examples"] == n_kept


def test_adapter_and_merged_model_are_loadable(pipeline_run):
    from peft import PeftConfig
    from transformers import AutoModelForCausalLM

    outputs = read_manifest(pipeline_run["dir"] / "train", "train")["outputs"]
    assert PeftConfig.from_pretrained(outputs["adapter"]).r == 8
    model = AutoModelForCausalLM.from_pretrained(outputs["merged"])
    assert model.config.num_hidden_layers == 2


def test_quantized_gguf_loads_and_answers(pipeline_run):
    gguf = Path(read_manifest(pipeline_run["dir"] / "quantize", "quantize")["outputs"]["gguf"])
    assert gguf.name == "model-q4_0.gguf"
    from gpt4all.core.llamacpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False)
    try:
        out = llm("Hello", max_tokens=4, temperature=0.0)
        again = llm("Hello", max_tokens=4, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] >= 1 and out["choices"][0]["text"] == again["choices"][0]["text"]
    assert out["choices"][0]["text"] == generate(gguf, "Hello", max_tokens=4)  # the stage's helper, same answer


def test_evaluation_results_and_plot(pipeline_run):
    ev = pipeline_run["dir"] / "evaluate"
    results = json.loads((ev / "results.json").read_text())
    assert results["examples"] == 6 and results["clip"] == 100
    for r in results["models"].values():  # perplexity = exp(mean NLL), clipped at 100
        assert len(r["perplexity"]) == 6 == len(r["nll"])
        assert r["perplexity"] == pytest.approx([min(math.exp(n), 100.0) for n in r["nll"]], rel=1e-6)
        assert r["clipped"] == sum(math.exp(n) >= 100 for n in r["nll"])
    assert len((ev / "results.csv").read_text().splitlines()) == 1 + 3 * 6
    assert (ev / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wandb_offline_runs_hold_the_logged_metrics(pipeline_run):
    d = pipeline_run["dir"]
    curate = wandb_run(d / "curate")
    funnel = json.loads((d / "curate" / "funnel.json").read_text())
    assert curate["state"] == "finished" and curate["exit_code"] == 0
    assert curate["summary"]["curate/kept"] == funnel["kept"]
    assert curate["config"]["curation"]["drop_truncated"] is True

    evaluate = wandb_run(d / "evaluate")
    results = json.loads((d / "evaluate" / "results.json").read_text())
    for name, r in results["models"].items():
        assert evaluate["summary"][f"evaluate/median_perplexity/{name}"] == pytest.approx(r["median_perplexity"])
    assert list((d / "evaluate" / "wandb").rglob("media/images/**/*.png"))

    train = wandb_run(d / "train")
    assert "train/loss" in train["summary"] and train["summary"]["trainer/global_step"] >= 3


def test_stage_runs_share_a_wandb_group(pipeline_run):
    groups = set()
    for stage in STAGES:
        (run,) = list((pipeline_run["dir"] / stage / "wandb").glob("offline-run-*"))
        wandb = Path(sys.executable).with_name("wandb")
        records = subprocess.run([str(wandb), "leet", "inspect", "--json", str(run)],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
        run_rec = next(json.loads(line)["run"] for line in records.splitlines() if '"type":"run"' in line)
        groups.add(run_rec["run_group"])
        assert run_rec["job_type"] == stage
    assert groups == {f"pipeline-{pipeline_run['dir'].name}"}


def test_api_key_is_written_nowhere(pipeline_run):
    needle = FAKE_KEY.encode()
    offenders = [p for p in pipeline_run["out"].rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert offenders == []
    assert FAKE_KEY not in pipeline_run["stdout"] + pipeline_run["stderr"]


def _artifacts(stage_dir: Path) -> dict[str, dict]:
    (run,) = list((stage_dir / "wandb").glob("offline-run-*"))
    records = subprocess.run([str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(run)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    arts = [json.loads(line)["artifact"] for line in records.splitlines() if '"type":"artifact"' in line]
    return {a["name"]: {**a, "metadata": json.loads(a.get("metadata") or "{}")} for a in arts}


def test_wandb_lineage_links_data_to_models(pipeline_run):
    d = pipeline_run["dir"]
    chain = [("collect", "responses"), ("curate", "curated"), ("train", "lora-model"), ("quantize", "quantized-model")]
    produced = {stage: _artifacts(d / stage)[name] for stage, name in chain}
    for (up, up_name), (down, _) in zip(chain, chain[1:]):
        upstream = produced[down]["metadata"]["upstream"]
        assert upstream["name"] == up_name and upstream["digest"] == produced[up]["digest"]
    assert produced["train"]["type"] == "model"
    refs = [c["ref"] for c in produced["quantize"]["manifest"]["contents"]]
    assert any(r.endswith("model-q4_0.gguf") for r in refs)  # referenced, not copied into the run
