"""quantize: setup (find the train run, build the scheme) -> check (bad input, before any file) -> make -> smoke
(loads, answers, speed) -> KL divergence to the unquantized reference and the quality gate -> save.

The scheme is the class `quant._target_` names (gpt4all.quantize.schemes; conf/quant/*.yaml): gguf (export with
llama.cpp's convert_hf_to_gguf.py, then q8_0 / q4_0 / q4_k_m / ... with llama.cpp, optionally with an importance
matrix), gguf_lora (the adapter through convert_lora_to_gguf.py over the base model's GGUF), gptq (gptqmodel),
bnb (bitsandbytes nf4), none. Every scheme records its artifact, size, time taken, a greedy answer, generation
tokens/s and its KLD in manifest.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.lm import Spec, load_lm, score_divergence
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.template import render_prompt
from gpt4all.core.tracking import Tracker
from gpt4all.quantize.hf_quant import weights_size_mb
from gpt4all.quantize.schemes import Job, Made, Scheme

log = logging.getLogger(__name__)
KLD_KEYS = ("mean_kld", "p99_kld", "same_top_pct", "rms_delta_p_pct", "ppl_ratio", "tokens")


class QualityGateError(RuntimeError):
    """The quantized model's mean KL divergence to its reference exceeds quantize.max_kld."""


def gate_pairs(dataset_dir: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """The last `n` curated pairs of the seeded shuffle (calibration draws from the front) as eval triples."""
    import datasets

    ds = datasets.load_from_disk(str(dataset_dir)).shuffle(seed=seed, keep_in_memory=True)
    rows = ds.select(range(max(0, len(ds) - n), len(ds)))
    return [(r["prompt"], "", r["response"]) for r in rows]


def divergence(scheme: Scheme, made: Made, job: Job) -> dict[str, Any] | None:
    """KLD of the artifact to its reference on a slice of the curated pairs; None when there is nothing to compare."""
    q = job.cfg.quantize
    if made.reference is None or (q.kld_examples <= 0 and q.max_kld is None):
        return None
    examples = gate_pairs(job.dataset, max(q.kld_examples, 1), job.cfg.seed)
    ref = load_lm(made.reference, n_threads=scheme.n_threads, n_ctx=q.kld_max_length)
    try:
        quant = type(scheme).load(made.model, n_threads=scheme.n_threads, n_ctx=q.kld_max_length)
        try:
            div = score_divergence(ref, quant, examples, job.template, q.kld_max_length, progress=False)
        finally:
            quant.close()
    finally:
        ref.close()
    return div.summary()


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    train_dir = Path(cfg.quantize.model_dir) if cfg.quantize.model_dir else latest_run(cfg.paths.output_dir, "train")
    train = read_manifest(train_dir, "train")
    merged = Path(train["outputs"]["merged"])
    template = OmegaConf.create(train["inputs"]["template"])
    scheme: Scheme = instantiate(cfg.quant, _convert_="all")
    target = str(cfg.quant._target_)
    inputs = {"train_dir": train_dir, "merged": merged, "template": train["inputs"]["template"], "scheme": target}
    job = Job(cfg, run_dir, train_dir, train, merged, template, render_prompt(template, scheme.smoke_prompt))
    scheme.check(job)

    start = time.perf_counter()
    made = scheme.make(job)
    if made is None:
        write_manifest(run_dir, "quantize", config_hash(cfg), inputs=inputs, outputs={"model": merged},
                       metrics={"kind": "none", "scheme": scheme.name})
        return {"method": "none", "model": str(merged)}
    artifact = Path(made.model.lora or made.model.path)
    outputs = {**made.outputs, "artifact": artifact, "model": made.model.path, "lora": made.model.lora,
               "reference": made.reference.path if made.reference else None}
    outputs = {k: v for k, v in outputs.items() if v is not None}
    metrics = {"scheme": scheme.name, "kind": made.model.kind,
               "reference_kind": made.reference.kind if made.reference else None, **made.metrics,
               "seconds": round(time.perf_counter() - start, 2), "size_mb": weights_size_mb(artifact),
               "unquantized_mb": weights_size_mb(merged)}
    log.info("[quantize] %s: %s (%.1f MB) in %.1f s", scheme.name, artifact, metrics["size_mb"], metrics["seconds"])

    lm = type(scheme).load(made.model, n_threads=scheme.n_threads, n_ctx=512)
    try:
        gen = lm.generate(job.prompt, max_tokens=scheme.smoke_max_tokens)
    finally:
        lm.close()
    metrics.update(smoke_answer=" ".join(gen.text.split()), tokens_per_s=round(gen.tokens_per_s, 2))
    if scheme.measure_unquantized:
        ref = load_lm(Spec("hf", str(merged)))
        try:
            metrics["unquantized_tokens_per_s"] = round(ref.generate(job.prompt, scheme.smoke_max_tokens).tokens_per_s, 2)
        finally:
            ref.close()
    log.info("[quantize] %s answers %r with %r (%.1f tokens/s)", scheme.name, scheme.smoke_prompt, gen.text,
             gen.tokens_per_s)

    kld = divergence(scheme, made, job)
    if kld is not None:
        metrics["kld"] = kld
        log.info("[quantize] %s vs %s: mean KLD %.5f (99th pct %.4f), same top token %.1f %% on %d tokens",
                 scheme.name, made.reference.path, kld["mean_kld"], kld["p99_kld"], kld["same_top_pct"], kld["tokens"])
    max_kld = cfg.quantize.max_kld
    if max_kld is not None and kld is not None and kld["mean_kld"] > max_kld:
        raise QualityGateError(f"{scheme.name}: mean KLD {kld['mean_kld']:.5f} to {made.reference.path} on "
                               f"{kld['tokens']} tokens exceeds quantize.max_kld={max_kld}; {artifact} is not shipped")

    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    flat.update({f"kld/{k}": kld[k] for k in KLD_KEYS} if kld else {})
    tracker.log({f"quantize/{k}": v for k, v in flat.items()})
    tracker.table("quantize/smoke", [{"prompt": scheme.smoke_prompt, "answer": metrics["smoke_answer"]}])
    tracker.table("quantize/tradeoff", [{**{k: metrics.get(k) for k in (
        "scheme", "size_mb", "unquantized_mb", "seconds", "tokens_per_s", "unquantized_tokens_per_s")},
        **({k: kld[k] for k in KLD_KEYS} if kld else {})}])
    write_manifest(run_dir, "quantize", config_hash(cfg), inputs=inputs, outputs=outputs, metrics=metrics)
    return {"method": scheme.name, **{k: str(v) for k, v in outputs.items() if k in ("gguf", "artifact")},
            **{k: v for k, v in metrics.items() if k != "imatrix"}}
