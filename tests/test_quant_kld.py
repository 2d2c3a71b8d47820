"""KL divergence to the unquantized model, the importance matrix from curated data, the quality gate, and
quantization schemes as classes found through their YAML."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_quant_schemes import TEMPLATE, stage, train_run  # noqa: F401 - train_run is a fixture

from gpt4all.core.config import ConfigError
from gpt4all.core.lm import (
    GGUFLM,
    HFLM,
    Spec,
    load_lm,
    resolve_run_dir,
    score_divergence,
)
from gpt4all.core.manifest import read_manifest
from gpt4all.core.metrics import Divergence, token_divergence
from gpt4all.quantize.schemes import Job, Made, Scheme
from gpt4all.quantize.stage import QualityGateError

EXAMPLES = [("What is 2 plus 2?", "", "2 plus 2 is 4."), ("Name a colour.", "", "Blue is a colour of the sky."),
            ("Say hello.", "", "Hello there, friend!")]


def numpy_divergence(ref: np.ndarray, q: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The same statistics written directly in numpy (float64), as llama-perplexity --kl-divergence defines them."""
    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lr, lq = log_softmax(ref), log_softmax(q)
    kld = (np.exp(lr) * (lr - lq)).sum(-1)
    rows = np.arange(len(targets))
    dp = np.exp(lq[rows, targets]) - np.exp(lr[rows, targets])
    return {"mean_kld": kld.mean(), "p99_kld": np.quantile(kld, 0.99), "median_kld": np.median(kld),
            "same_top_pct": 100 * (ref.argmax(-1) == q.argmax(-1)).mean(), "rms_delta_p_pct": 100 * np.sqrt((dp ** 2).mean()),
            "ppl_ratio": np.exp((-lq[rows, targets] + lr[rows, targets]).mean())}


def test_kld_of_logits_against_themselves_is_zero():
    logits = torch.randn(50, 300) * 3
    d = Divergence()
    d.add(logits, logits.clone(), torch.randint(0, 300, (50,)))
    s = d.summary()
    assert s["mean_kld"] == 0 and s["p99_kld"] == 0 and s["same_top_pct"] == 100
    assert s["rms_delta_p_pct"] == 0 and s["ppl_ratio"] == 1 and s["ppl_ratio_ci"] == [1.0, 1.0]


def test_kld_against_perturbed_logits_matches_numpy():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 4, (3, 40, 500)).astype(np.float32)
    q = ref + rng.normal(0, 0.5, ref.shape).astype(np.float32)
    targets = rng.integers(0, 500, (3, 40))
    d = Divergence()
    for i in range(3):
        d.add(ref[i], q[i], targets[i])
    got, want = d.summary(), numpy_divergence(ref.reshape(-1, 500), q.reshape(-1, 500), targets.reshape(-1))
    assert got["mean_kld"] > 0.01 and got["same_top_pct"] < 100 and got["tokens"] == 120 and got["examples"] == 3
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    lo, hi = got["mean_kld_ci"]
    assert lo <= got["mean_kld"] <= hi
    assert token_divergence(ref[0], q[0], targets[0])["kld"].shape == (40,)


@pytest.fixture(scope="module")
def hf_pair(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and a copy with every weight perturbed by 2 % noise."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("perturbed")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02 * p.abs().mean())
    model.save_pretrained(out)
    for f in tiny_model_dir.glob("tokenizer*"):
        (out / f.name).write_bytes(f.read_bytes())
    return tiny_model_dir, out


def test_model_kld_against_itself_zero_and_against_perturbed_copy_positive(hf_pair):
    template = OmegaConf.create(TEMPLATE)
    ref, same, other = (load_lm(Spec("hf", str(p))) for p in (hf_pair[0], hf_pair[0], hf_pair[1]))
    try:
        s = score_divergence(ref, same, EXAMPLES, template, progress=False).summary()
        assert s["mean_kld"] == pytest.approx(0, abs=1e-9) and s["same_top_pct"] == 100 and s["tokens"] > 10
        div = score_divergence(ref, other, EXAMPLES, template, progress=False)
        s = div.summary()
        assert s["mean_kld"] > 1e-6
        # the same statistics from the raw logits of the two models, computed directly in numpy
        from gpt4all.core.metrics import conditional_sequences, instruction_prompt

        seqs = conditional_sequences(ref.encode, template, [(instruction_prompt(i, x), o) for i, x, o in EXAMPLES])
        r, q, t = [], [], []
        for ids, labels in zip(seqs.seqs, seqs.labels):
            a, tgt = ref.scored_logits(ids, labels)
            b, _ = other.scored_logits(ids, labels)
            r.append(a.numpy()), q.append(b.numpy()), t.append(tgt.numpy())
        want = numpy_divergence(np.concatenate(r), np.concatenate(q), np.concatenate(t))
        for key, value in want.items():
            assert s[key] == pytest.approx(value, abs=1e-6), key
    finally:
        for lm in (ref, same, other):
            lm.close()


def quantize_run(train_run: Path, tmp_path: Path, *overrides: str) -> Path:  # noqa: F811
    run_dir = tmp_path / "q"
    stage("quantize", run_dir, [f"quantize.model_dir={train_run}", "++quant.smoke_max_tokens=4",
                                "++quant.measure_unquantized=false", *overrides])
    return run_dir


@pytest.mark.skipif(not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))),
                    reason="building llama-imatrix / llama-quantize needs cmake and a C++ compiler")
def test_imatrix_quant_loads_and_names_its_calibration_data(train_run, tmp_path):  # noqa: F811
    run = quantize_run(train_run, tmp_path, "quant=gguf_q4_k_m", "quant.imatrix=true", "quant.imatrix_ctx=64")
    m = read_manifest(run, "quantize")
    info = m["metrics"]["imatrix"]
    assert info["dataset"] == str(train_run / "dataset") and info["pairs"] == 12 and info["chunks"] >= 2
    assert info["tokens"] >= 128 and len(info["dataset_digest"]) == 64
    art = Path(m["outputs"]["artifact"])
    meta = {k: f.contents() for k, f in gguf.GGUFReader(str(art)).fields.items()}
    assert f"calibration-{info['dataset_digest'][:16]}" in meta["quantize.imatrix.dataset"]
    assert meta["gpt4all.imatrix.dataset_digest"] == info["dataset_digest"]
    assert meta["gpt4all.imatrix.tokens"] == info["tokens"] and meta["quantize.imatrix.chunks_count"] == info["chunks"]
    assert meta["gpt4all.imatrix.dataset"].endswith("dataset")
    lm = GGUFLM(art, n_ctx=128, logits_all=False)
    try:
        assert lm.generate("Hello", max_tokens=4).tokens > 0
    finally:
        lm.close()
    kld = m["metrics"]["kld"]  # measured by the stage against the f16 export
    assert kld["tokens"] > 0 and kld["mean_kld"] >= 0 and m["outputs"]["reference"].endswith("model-f16.gguf")
    # the written matrix is accepted back as a file for this model
    again = quantize_run(train_run, tmp_path / "again", "quant=gguf_q4_0", f"quant.imatrix={m['outputs']['imatrix']}",
                         "quantize.kld_examples=0")
    assert read_manifest(again, "quantize")["metrics"]["label"] == "q4_0+imatrix"


def _foreign_imatrix(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_array("imatrix.datasets", ["other.txt"])
    w.add_uint32("imatrix.chunk_count", 4)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(4096, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.ones(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("overrides,match", [
    (["quant=gguf_q4_0", "quant.imatrix=true", "quant.imatrix_ctx=4096"], r"dataset: the calibration set is too small.*8192"),
    (["quant=gguf_q4_0", "quant.imatrix=FOREIGN"], r"computed for another model: entry blk\.0\.attn_q\.weight \(width 4096\)"),
    (["quant=gguf_q4_0", "quant.ftype=iq2_xs"], r"ftype=iq2_xs: llama.cpp refuses this scheme for llama .*imatrix"),
    (["quant=gguf_q4_0", "quant.ftype=q9_9"], r"quant.ftype='q9_9' is not a llama.cpp scheme"),
])
def test_bad_imatrix_input_fails_before_any_file(train_run, tmp_path, overrides, match):  # noqa: F811
    foreign = _foreign_imatrix(tmp_path / "foreign.gguf")
    overrides = [o.replace("FOREIGN", str(foreign)) for o in overrides]
    with pytest.raises(ValueError, match=match):
        quantize_run(train_run, tmp_path, *overrides)
    assert not list((tmp_path / "q").glob("*.gguf")) and not list((tmp_path / "q").glob("calibration-*"))


def test_empty_calibration_set_fails(train_run, tmp_path):  # noqa: F811
    import datasets

    from gpt4all.core.manifest import write_manifest

    m = read_manifest(train_run, "train")
    empty = tmp_path / "empty_ds"
    datasets.Dataset.from_dict({"prompt": [], "response": []}).save_to_disk(str(empty))
    broken = tmp_path / "train"
    broken.mkdir()
    write_manifest(broken, "train", "x", inputs={**m["inputs"], "dataset": str(empty)}, outputs=m["outputs"])
    with pytest.raises(ValueError, match=r"empty_ds: the curated dataset is empty"):
        quantize_run(broken, tmp_path, "quant=gguf_q4_0", "quant.imatrix=true")
    assert not list((tmp_path / "q").glob("*.gguf"))


def test_quality_gate_fails_the_stage_with_the_measured_value(train_run, tmp_path):  # noqa: F811
    with pytest.raises(QualityGateError, match=r"gguf_q4_0: mean KLD (\d\.\d+) to .*model-f16.gguf .* exceeds "
                                               r"quantize.max_kld=1e-09") as err:
        quantize_run(train_run, tmp_path, "quant=gguf_q4_0", "quantize.max_kld=1e-9")
    assert float(err.value.args[0].split("mean KLD ")[1].split()[0]) > 1e-9
    assert not (tmp_path / "q" / "manifest.json").exists()
    ok = quantize_run(train_run, tmp_path / "ok", "quant=gguf_q4_0", "quantize.max_kld=100")
    assert read_manifest(ok, "quantize")["metrics"]["kld"]["mean_kld"] < 100


@dataclass
class HalfPrecisionScheme(Scheme):
    """A scheme written in a test: the merged model saved in float16 (or bfloat16), loaded with transformers."""
    dtype: str = "float16"

    def make(self, job: Job) -> Made:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        out = job.run_dir / f"hf-{self.dtype}"
        AutoModelForCausalLM.from_pretrained(str(job.merged), dtype=getattr(torch, self.dtype)).save_pretrained(out)
        AutoTokenizer.from_pretrained(str(job.merged)).save_pretrained(out)
        return Made(Spec("hf", str(out)), Spec("hf", str(job.merged)), {}, {"label": self.dtype})

    @classmethod
    def load(cls, spec: Spec, n_threads: int = 1, n_ctx: int = 2048) -> HFLM:
        lm = load_lm(spec)
        lm.model.float()
        return lm


def test_a_new_scheme_is_found_through_its_yaml_alone(train_run, tmp_path):  # noqa: F811
    conf = tmp_path / "conf" / "quant"
    conf.mkdir(parents=True)
    (conf / "half.yaml").write_text(f"_target_: {__name__}.HalfPrecisionScheme\nname: half\ndtype: bfloat16\n")
    run = quantize_run(train_run, tmp_path, "quant=half", f"hydra.searchpath=[file://{tmp_path / 'conf'}]")
    m = read_manifest(run, "quantize")
    assert m["inputs"]["scheme"] == f"{__name__}.HalfPrecisionScheme" and m["metrics"]["label"] == "bfloat16"
    assert m["metrics"]["kld"]["mean_kld"] > 0 and m["metrics"]["kld"]["same_top_pct"] > 50
    spec = resolve_run_dir(run)
    assert spec.scheme.endswith("HalfPrecisionScheme") and spec.reference.path == m["outputs"]["reference"]
    lm = load_lm(spec)  # through the class's own load
    try:
        assert next(lm.model.parameters()).dtype == torch.float32
    finally:
        lm.close()
    # its config schema is the class: a key it lacks is refused, naming the key
    with pytest.raises(ConfigError, match=r"quant\.group_size"):
        quantize_run(train_run, tmp_path / "bad", "quant=half", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                     "+quant.group_size=32")


def test_a_key_another_scheme_has_is_refused(train_run, tmp_path):  # noqa: F811
    with pytest.raises(Exception, match=r"quant\.group_size"):
        quantize_run(train_run, tmp_path, "quant=gguf_q4_0", "quant.group_size=32")
    with pytest.raises(ConfigError, match=r"quant\.group_size"):
        quantize_run(train_run, tmp_path, "quant=gguf_q4_0", "+quant.group_size=32")


def test_evaluate_reports_kld_of_a_quantized_run(train_run, tmp_path, shared_data):  # noqa: F811
    q = quantize_run(train_run, tmp_path, "quant=gguf_q8_0", "quantize.kld_examples=0")
    run_dir = tmp_path / "evaluate"
    suite = shared_data / "self_instruct" / "user_oriented_instructions.jsonl"
    stage("evaluate", run_dir, [f"evaluate.train_dir={train_run}", f"evaluate.quantize_dir={q}",
                                "evaluate.include_base=false", "eval=self_instruct", f"eval.path={suite}",
                                "eval.limit=4", "eval.max_length=128"])
    res = json.loads((run_dir / "results.json").read_text())
    (name,) = res["divergence"]
    d = res["divergence"][name]
    assert name == "finetuned-q8_0" and d["reference"].endswith("model-f16.gguf") and d["tokens"] > 0
    assert 0 <= d["mean_kld"] < 0.05 and d["same_top_pct"] > 80
    assert res["tradeoffs"][0]["kld_mean_kld"] == d["mean_kld"]
    assert read_manifest(run_dir)["metrics"]["kld"][name]["mean_kld"] == d["mean_kld"]
