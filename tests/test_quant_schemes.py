"""Every quant scheme through the quantize stage on a tiny finetuned model, then the evaluate stage over them."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import shutil
import statistics
from pathlib import Path

import gguf
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from gpt4all.core.config import CONF_PACKAGE
from gpt4all.core.lm import GGUFLM, Spec, load_lm, resolve_run_dir, score_nll
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.models import load_model, load_tokenizer, smollm2_gguf_path
from gpt4all.core.tracking import run_stage
from gpt4all.quantize.gguf_check import GGUFCompatibilityError, check_metadata

TEMPLATE = {"prompt": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", "response_suffix": "<|im_end|>\n"}
HAS_GPTQ = importlib.util.find_spec("gptqmodel") is not None


def compose_cfg(stage: str, overrides: list[str]):
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose(config_name=stage, overrides=["model=tiny_random", "logger=none", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def stage(name: str, run_dir: Path, overrides: list[str]) -> dict:
    from importlib import import_module

    return run_stage(name, compose_cfg(name, overrides), run_dir, import_module(f"gpt4all.{name}.stage").run)


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, tiny_model_cfg, cache_dir) -> Path:
    """A train run dir as gpt4all-train writes it: a LoRA adapter (random, non-zero B) on the seed-42 tiny model,
    the merged model (with its tokenizer), a curated dataset, and the manifest (template)."""
    import datasets
    from peft import LoraConfig, get_peft_model

    d = tmp_path_factory.mktemp("train_run")
    tok = load_tokenizer(tiny_model_cfg, cache_dir)
    base = load_model(tiny_model_cfg, cache_dir, seed=42)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(d / "adapter")
    tok.save_pretrained(d / "adapter")
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(d / "merged")
    tok.save_pretrained(d / "merged")
    rows = {"id": [str(i) for i in range(12)], "source": ["t"] * 12,
            "prompt": [f"Question number {i}: what is {i} plus {i}?" for i in range(12)],
            "response": [f"{i} plus {i} is {2 * i}." for i in range(12)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(d / "dataset"))
    write_manifest(d, "train", "test", inputs={"dataset": str(d / "dataset"), "model": "tiny_random",
                                               "template": TEMPLATE},
                   outputs={"adapter": d / "adapter", "merged": d / "merged"})
    return d


def quantize(train_run: Path, tmp_path_factory, scheme: str, *extra: str) -> Path:
    run_dir = tmp_path_factory.mktemp(f"quantize_{scheme}")
    stage("quantize", run_dir, [f"quantize.model_dir={train_run}", f"quant={scheme}", "quant.smoke_max_tokens=6", *extra])
    return run_dir


@pytest.fixture(scope="module")
def q4_run(train_run, tmp_path_factory) -> Path:
    return quantize(train_run, tmp_path_factory, "gguf_q4_0")


@pytest.fixture(scope="module")
def lora_run(train_run, tmp_path_factory) -> Path:
    return quantize(train_run, tmp_path_factory, "gguf_lora")


@pytest.fixture(scope="module")
def bnb_run(train_run, tmp_path_factory) -> Path:
    return quantize(train_run, tmp_path_factory, "bnb_nf4")


def test_gguf_q4_0_records_artifact_size_time_speed(q4_run):
    m = read_manifest(q4_run, "quantize")
    art = Path(m["outputs"]["artifact"])
    assert art.name == "model-q4_0.gguf" and art.is_file()
    mt = m["metrics"]
    assert mt["kind"] == "gguf" and mt["label"] == "q4_0"
    assert mt["size_mb"] == pytest.approx(art.stat().st_size / 2**20, abs=0.01)
    assert 0 < mt["size_mb"] < mt["export_mb"] < mt["unquantized_mb"]
    assert mt["seconds"] > 0 and mt["tokens_per_s"] > 0 and mt["unquantized_tokens_per_s"] > 0
    r = gguf.GGUFReader(str(art))
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "<|im_start|>" in r.fields["tokenizer.chat_template"].contents()
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == 2


@pytest.mark.parametrize("scheme,ftype", [("gguf_q8_0", 7), ("gguf_q4_k_m", 15), ("gguf_f16", 1)])
def test_other_gguf_schemes_load(train_run, tmp_path_factory, scheme, ftype):
    m = read_manifest(quantize(train_run, tmp_path_factory, scheme), "quantize")
    art = Path(m["outputs"]["gguf"])
    assert gguf.GGUFReader(str(art)).fields["general.file_type"].contents() == ftype
    lm = GGUFLM(art, n_ctx=256, logits_all=False)
    try:
        assert lm.generate("Hello", max_tokens=4).tokens > 0
    finally:
        lm.close()


def test_pre_tokenizer_override_for_older_llama_cpp(train_run, tmp_path_factory):
    run = quantize(train_run, tmp_path_factory, "gguf_f16", "quant.pre_tokenizer=starcoder")
    art = read_manifest(run, "quantize")["outputs"]["gguf"]
    assert gguf.GGUFReader(art).fields["tokenizer.ggml.pre"].contents() == "starcoder"
    ref = load_tokenizer(OmegaConf.create({"source": "gguf", "gguf_file": None}), Path.home() / ".cache/gpt4all-lab")
    text = "def f(x):\n    return x**2  # 12345 étés"
    lm = GGUFLM(art, n_ctx=128, logits_all=False)
    try:
        assert lm.encode(text) == ref.encode(text, add_special_tokens=False)  # same split rule
    finally:
        lm.close()


def _without_key(src: Path, dst: Path, drop: str) -> Path:
    reader, writer = gguf.GGUFReader(str(src)), gguf.GGUFWriter(str(dst), "llama")
    for key, field in reader.fields.items():
        if key.startswith(("tokenizer.", "general.")) and key != drop and key != "general.architecture":
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return dst


def _train_run_variant(train_run: Path, out: Path, template: dict, drop_chat_template: bool) -> Path:
    """A copy of the train run with another training template (and optionally no chat template in merged/)."""
    shutil.copytree(train_run, out)
    if drop_chat_template:
        (out / "merged" / "chat_template.jinja").unlink()
    m = read_manifest(train_run, "train")
    write_manifest(out, "train", "x", inputs={**m["inputs"], "template": template},
                   outputs={"adapter": out / "adapter", "merged": out / "merged"})
    return out


TEXT_TEMPLATE = {"prompt": "### Instruction:\n{prompt}\n### Response:\n", "response_suffix": "<|im_end|>"}


def test_text_template_becomes_the_gguf_chat_template(train_run, tmp_path, tmp_path_factory):
    """A base model (no chat template) trained with a text template: the GGUF chats in the training format."""
    import jinja2

    variant = _train_run_variant(train_run, tmp_path / "train", TEXT_TEMPLATE, drop_chat_template=True)
    art = read_manifest(quantize(variant, tmp_path_factory, "gguf_f16"), "quantize")["outputs"]["gguf"]
    chat = gguf.GGUFReader(art).fields["tokenizer.chat_template"].contents()
    turns = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Bye?"}]
    assert jinja2.Template(chat).render(messages=turns) == \
        "### Instruction:\nHi?\n### Response:\nHello.<|im_end|>### Instruction:\nBye?\n### Response:\n"
    assert check_metadata(art, OmegaConf.create(TEXT_TEMPLATE))["stop_token"] == "<|im_end|>"


def test_chat_template_mismatch_fails_and_leaves_no_file(train_run, tmp_path):
    variant = _train_run_variant(train_run, tmp_path / "train", TEXT_TEMPLATE, drop_chat_template=False)
    run_dir = tmp_path / "q"
    with pytest.raises(GGUFCompatibilityError, match="trained on"):
        stage("quantize", run_dir, [f"quantize.model_dir={variant}", "quant=gguf_q4_0"])
    assert not list(run_dir.glob("*.gguf*"))
    with pytest.raises(GGUFCompatibilityError, match="eos_token_id"):
        check_metadata(_without_key(smollm2_gguf_path(), tmp_path / "no_eos.gguf", "tokenizer.ggml.eos_token_id"))


def test_template_mismatch_fails(tmp_path):
    with pytest.raises(GGUFCompatibilityError, match="trained on"):
        check_metadata(smollm2_gguf_path(), OmegaConf.create({"prompt": "### Instruction:\n{prompt}\n### Response:\n",
                                                              "response_suffix": "</s>"}))


def test_gguf_lora_gives_the_merged_answers(lora_run, train_run):
    m = read_manifest(lora_run, "quantize")
    r = gguf.GGUFReader(m["outputs"]["lora_gguf"])
    assert r.fields["general.type"].contents() == "adapter" and r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    names = {t.name for t in r.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.1.attn_output.weight.lora_b"} <= names
    assert m["metrics"]["lora_mb"] < m["metrics"]["base_mb"] / 10
    # Run-time LoRA = merged, and both differ from the base alone (the adapter does something).
    examples = [("What is 2 plus 2?", "", "2 plus 2 is 4."), ("Name a colour.", "", "Blue is a colour.")]
    scores = {}
    for name, spec in {"lora": resolve_run_dir(lora_run), "merged": Spec("gguf", m["outputs"]["merged_gguf"]),
                       "base": Spec("gguf", m["outputs"]["base_gguf"])}.items():
        lm = load_lm(spec, n_ctx=256)
        try:
            scores[name] = score_nll(lm, "conditional", examples, OmegaConf.create(TEMPLATE), progress=False)
        finally:
            lm.close()
    assert scores["lora"] == pytest.approx(scores["merged"], rel=1e-3)
    assert max(abs(a - b) for a, b in zip(scores["lora"], scores["base"])) > 1e-2


def test_bnb_nf4_loads_with_transformers(bnb_run):
    from transformers import AutoModelForCausalLM

    m = read_manifest(bnb_run, "quantize")
    assert m["metrics"]["kind"] == "bnb" and m["metrics"]["size_mb"] < m["metrics"]["unquantized_mb"]
    model = AutoModelForCausalLM.from_pretrained(m["outputs"]["artifact"], device_map="cpu")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == 49152


@pytest.mark.skipif(not HAS_GPTQ, reason="gptqmodel not installed (pip install -e '.[gptq]')")
def test_gptq_4bit_calibrates_on_curated_data_and_loads(train_run, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    run = quantize(train_run, tmp_path_factory, "gptq_4bit", "quant.group_size=32", "quant.calibration_samples=8")
    m = read_manifest(run, "quantize")
    assert m["metrics"]["calibration_samples"] == 8 and m["metrics"]["size_mb"] < m["metrics"]["unquantized_mb"]
    qcfg = json.loads((Path(m["outputs"]["artifact"]) / "config.json").read_text())["quantization_config"]
    assert (qcfg["bits"], qcfg["group_size"], qcfg["desc_act"]) == (4, 32, False)
    model = AutoModelForCausalLM.from_pretrained(m["outputs"]["artifact"], device_map="cpu")
    q_proj = model.model.layers[0].self_attn.q_proj  # a GPTQ layer: packed 4-bit weights in int32, groups of 32
    assert (getattr(q_proj, "bits", None), getattr(q_proj, "group_size", None)) == (4, 32), type(q_proj)
    assert q_proj.qweight.dtype == torch.int32
    assert math.isfinite(model(torch.tensor([[1, 2, 3]])).logits.sum().item())


def test_evaluate_compares_any_models(train_run, q4_run, lora_run, bnb_run, tmp_path, shared_data):
    """Base, finetuned, quantized (legacy switches) plus peft / gguf+lora / run_dir / nf4 specs on one suite."""
    run_dir = tmp_path / "evaluate"
    suite = shared_data / "self_instruct" / "user_oriented_instructions.jsonl"
    result = stage("evaluate", run_dir, [
        f"evaluate.train_dir={train_run}", f"evaluate.quantize_dir={q4_run}", "eval=self_instruct",
        f"eval.path={suite}", "eval.limit=5", "eval.max_length=128",
        f"+evaluate.models.adapter={{kind: peft, path: {train_run}/adapter}}",
        f"+evaluate.models.lora_gguf={{kind: run_dir, path: {lora_run}}}",
        f"+evaluate.models.nf4={{kind: run_dir, path: {bnb_run}}}",
    ])
    res = json.loads((run_dir / "results.json").read_text())
    names = ["base:tiny_random", "finetuned", "finetuned-q4_0", "adapter", "lora_gguf", "nf4"]
    assert list(res["models"]) == names and set(result["median_perplexity"]) == set(names)
    ppl = {k: v["nll"] for k, v in res["models"].items()}  # a random model's perplexities all clip at 100
    assert ppl["adapter"] == pytest.approx(ppl["finetuned"], rel=1e-4)  # PEFT on base == merged
    assert ppl["lora_gguf"] == pytest.approx(ppl["finetuned"], rel=0.01)  # llama.cpp f16 + LoRA == HF
    assert ppl["base:tiny_random"] != pytest.approx(ppl["finetuned"], rel=1e-3)
    assert [(t["a"], t["b"], t["test"]) for t in res["tests"]] == [
        ("finetuned", "base:tiny_random", "wilcoxon"), ("finetuned-q4_0", "finetuned", "wilcoxon")]
    one_sided, quantization = res["tests"]  # finetuned vs base: "lower?"; quantized vs finetuned: two-sided cost
    assert (one_sided["alternative"], quantization["alternative"]) == ("less", "two-sided")
    assert quantization["role"] == "quantization" and quantization["summary"].startswith("finetuned-q4_0 costs ")
    for t in res["tests"]:
        a, b = res["models"][t["a"]]["perplexity"], res["models"][t["b"]]["perplexity"]
        assert t["ratio"] == pytest.approx(statistics.median(x / y for x, y in zip(a, b)))
        assert t["ci_low"] <= t["ratio"] <= t["ci_high"]
    (trade,) = res["tradeoffs"]
    assert trade["model"] == "finetuned-q4_0" and trade["size_mb"] < trade["unquantized_mb"]
    assert "median_change_pct" in trade and trade["tokens_per_s"] > 0
    assert (run_dir / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert len((run_dir / "results.csv").read_text().splitlines()) == 1 + 6 * 5


def test_evaluate_gpt4all_2023_method_and_explicit_compare(train_run, q4_run, tmp_path):
    run_dir, q4 = tmp_path / "evaluate", read_manifest(q4_run)["outputs"]["gguf"]
    stage("evaluate", run_dir, [f"evaluate.train_dir={train_run}", "evaluate.include_base=false", "eval.limit=4",
                                "eval.method=gpt4all_2023", f"+evaluate.models.q4={{kind: gguf, path: {q4}}}", "evaluate.compare=[[q4,finetuned]]",
                                "evaluate.paired=false"])
    res = json.loads((run_dir / "results.json").read_text())
    assert res["method"] == "gpt4all_2023" and res["nan_perplexity"] == 0.0
    assert [(t["a"], t["b"], t["test"]) for t in res["tests"]] == [("q4", "finetuned", "mannwhitneyu")]
    # same arithmetic through llama.cpp and HF: q4_0 of a random tiny model stays within a few %
    f, q = res["models"]["finetuned"]["nll"], res["models"]["q4"]["nll"]
    assert all(abs(a - b) / b < 0.05 for a, b in zip(q, f))


def test_bad_model_spec_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"evaluate\.models\.x\.kind"):
        stage("evaluate", tmp_path / "e", [f"+evaluate.models.x={{kind: onnx, path: {tmp_path}}}", "eval.limit=1"])
    with pytest.raises(ValueError, match=r"evaluate.compare entry"):
        stage("evaluate", tmp_path / "e2", ["evaluate.compare=[[a,b]]", "eval.limit=1"])
