"""quantize: setup (find the train run) -> run (the `quant` scheme) -> check (loads, answers, speed) -> save.

Schemes (config group `quant`): gguf (f16 export with llama.cpp's convert_hf_to_gguf.py, then q8_0 / q4_0 / q4_k_m
with llama.cpp), gguf_lora (the adapter as a llama.cpp LoRA GGUF over the base model's GGUF), gptq (gptqmodel), bnb (bitsandbytes nf4), none.
Every scheme records its artifact, size, time taken, a greedy answer and generation tokens/s in manifest.json.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.lm import Spec, load_lm
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.models import load_model
from gpt4all.core.template import render_prompt
from gpt4all.core.tracking import Tracker
from gpt4all.quantize.convert import (
    check_architecture,
    export_gguf,
    export_lora_gguf,
    set_metadata,
)
from gpt4all.quantize.gguf import quantize_gguf
from gpt4all.quantize.gguf_check import (
    check_metadata,
    check_written,
    has_chat_template,
    text_chat_template,
)
from gpt4all.quantize.gguf_lora import compare_with_merged
from gpt4all.quantize.hf_quant import (
    bnb_quantize,
    calibration_texts,
    gptq_quantize,
    weights_size_mb,
)

log = logging.getLogger(__name__)

METHODS = ("gguf", "gguf_lora", "gptq", "bnb", "none")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")


def _export(cfg: DictConfig, model_dir: Path, out: Path, template: Any) -> Path:
    """Convert with llama.cpp's converter, set the GGUF metadata the training format needs, then check the file
    (tokenizer, special tokens, chat template, loads in llama.cpp); a file failing a check is deleted."""
    q = cfg.quant
    path = export_gguf(model_dir, out, q.export_dtype, model_name=cfg.model.name)
    try:
        chat = None if has_chat_template(path) else text_chat_template(template)
        if chat:
            log.info("[quantize] %s has no chat template: writing the training format as one", path.name)
        if chat or q.pre_tokenizer:
            set_metadata(path, pre_tokenizer=q.pre_tokenizer, chat_template=chat)
        found = check_metadata(path, template if q.check_template else None, q.require_chat_template)
        tokenizer_dir = model_dir if (Path(model_dir) / "tokenizer.json").exists() else None
        check_written(path, tokenizer_dir, found)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def scheme_gguf(cfg: DictConfig, run_dir: Path, ctx: dict[str, Any]) -> tuple[Spec, dict[str, Any], dict[str, Any]]:
    q = cfg.quant
    exported = _export(cfg, ctx["merged"], run_dir / f"model-{q.export_dtype}.gguf", ctx["template"])
    outputs: dict[str, Any] = {"gguf_" + q.export_dtype: exported}
    final = exported
    if q.ftype:
        final = quantize_gguf(exported, run_dir / f"model-{q.ftype}.gguf", q.ftype)
        outputs["gguf_" + q.ftype] = final
    outputs["gguf"] = outputs["artifact"] = final
    label = q.ftype or q.export_dtype
    metrics = {"kind": "gguf", "label": label, "gguf_mb": weights_size_mb(final), "export_mb": weights_size_mb(exported)}
    return Spec("gguf", str(final)), outputs, metrics


def scheme_gguf_lora(cfg: DictConfig, run_dir: Path, ctx: dict[str, Any]) -> tuple[Spec, dict[str, Any], dict[str, Any]]:
    q, train = cfg.quant, ctx["train"]
    if train["inputs"].get("model") not in (None, cfg.model.name):
        raise ValueError(f"quant=gguf_lora rebuilds the base model from model={cfg.model.name}, but the train run "
                         f"{ctx['train_dir']} used model={train['inputs']['model']}: pass model={train['inputs']['model']}")
    base_dir = run_dir / "base_hf"
    load_model(cfg.model, cfg.paths.cache_dir, seed=cfg.seed).save_pretrained(base_dir)
    for name in TOKENIZER_FILES:   # the converter reads the base's tokenizer beside its config
        if (ctx["merged"] / name).is_file():
            shutil.copy2(ctx["merged"] / name, base_dir / name)
    try:
        base = _export(cfg, base_dir, run_dir / f"base-{q.export_dtype}.gguf", ctx["template"])
        lora = export_lora_gguf(Path(train["outputs"]["adapter"]), base_dir, run_dir / "adapter-lora.gguf")
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    merged = _export(cfg, ctx["merged"], run_dir / f"merged-{q.export_dtype}.gguf", ctx["template"])
    check = compare_with_merged(base, lora, merged, ctx["prompt"], max_tokens=q.smoke_max_tokens, n_threads=q.n_threads)
    log.info("[quantize] base + LoRA GGUF vs merged GGUF: %s", check)
    if check["rel_logit_diff"] > q.lora_tolerance:
        raise RuntimeError(f"{lora}: base + LoRA logits differ from the merged GGUF by {check['rel_logit_diff']:.4f} "
                           f"of the logit range (quant.lora_tolerance={q.lora_tolerance}): the adapter export is wrong")
    if not check["same_answer"]:
        log.warning("[quantize] base + LoRA and merged GGUF answer differently (f16 rounding on a near-tie)")
    outputs = {"base_gguf": base, "lora_gguf": lora, "merged_gguf": merged, "artifact": lora}
    metrics = {"kind": "gguf_lora", "label": "lora_gguf", "lora_mb": weights_size_mb(lora),
               "base_mb": weights_size_mb(base), "lora_max_logit_diff": check["max_logit_diff"],
               "lora_same_answer": check["same_answer"]}
    return Spec("gguf", str(base), lora=str(lora)), outputs, metrics


def scheme_gptq(cfg: DictConfig, run_dir: Path, ctx: dict[str, Any]) -> tuple[Spec, dict[str, Any], dict[str, Any]]:
    q = cfg.quant
    texts = calibration_texts(ctx["train"]["inputs"]["dataset"], ctx["template"], q.calibration_samples, cfg.seed)
    log.info("[quantize] GPTQ %d-bit, group %d, desc_act %s, %d calibration samples", q.bits, q.group_size,
             q.desc_act, len(texts))
    out = gptq_quantize(ctx["merged"], run_dir / f"gptq-{q.bits}bit", texts, bits=q.bits, group_size=q.group_size,
                        desc_act=q.desc_act, damp_percent=q.damp_percent, max_tokens=q.calibration_max_tokens,
                        cache_dir=cfg.paths.cache_dir)
    return Spec("gptq", str(out)), {"artifact": out, "model": out}, \
        {"kind": "gptq", "label": f"gptq_{q.bits}bit", "calibration_samples": len(texts)}


def scheme_bnb(cfg: DictConfig, run_dir: Path, ctx: dict[str, Any]) -> tuple[Spec, dict[str, Any], dict[str, Any]]:
    q = cfg.quant
    out = bnb_quantize(ctx["merged"], run_dir / f"bnb-{q.quant_type}", q.quant_type, q.double_quant, q.compute_dtype)
    return Spec("bnb", str(out)), {"artifact": out, "model": out}, {"kind": "bnb", "label": q.quant_type}


SCHEMES = {"gguf": scheme_gguf, "gguf_lora": scheme_gguf_lora, "gptq": scheme_gptq, "bnb": scheme_bnb}


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    train_dir = Path(cfg.quantize.model_dir) if cfg.quantize.model_dir else latest_run(cfg.paths.output_dir, "train")
    train = read_manifest(train_dir, "train")
    merged = Path(train["outputs"]["merged"])
    q = cfg.quant
    template = OmegaConf.create(train["inputs"]["template"])
    inputs = {"train_dir": train_dir, "merged": merged, "template": train["inputs"]["template"]}
    if q.method == "none":
        write_manifest(run_dir, "quantize", config_hash(cfg), inputs=inputs, outputs={"model": merged},
                       metrics={"kind": "none"})
        return {"method": "none", "model": str(merged)}
    if q.method not in SCHEMES:
        raise ValueError(f"quant.method must be one of {', '.join(METHODS)}, got {q.method!r}")
    ctx = {"train": train, "train_dir": train_dir, "merged": merged, "template": template,
           "prompt": render_prompt(template, q.smoke_prompt)}
    if q.method.startswith("gguf"):
        check_architecture(merged)   # before any file is written

    start = time.perf_counter()
    spec, outputs, metrics = SCHEMES[q.method](cfg, run_dir, ctx)
    metrics = {"scheme": q.name, **metrics, "seconds": round(time.perf_counter() - start, 2),
               "size_mb": weights_size_mb(Path(str(outputs["artifact"]))), "unquantized_mb": weights_size_mb(merged)}
    log.info("[quantize] %s: %s (%.1f MB) in %.1f s", q.name, outputs["artifact"], metrics["size_mb"], metrics["seconds"])

    lm = load_lm(spec, n_threads=q.n_threads, n_ctx=512)
    try:
        gen = lm.generate(ctx["prompt"], max_tokens=q.smoke_max_tokens)
    finally:
        lm.close()
    metrics.update(smoke_answer=" ".join(gen.text.split()), tokens_per_s=round(gen.tokens_per_s, 2))
    if q.measure_unquantized:
        ref = load_lm(Spec("hf", str(merged)))
        try:
            metrics["unquantized_tokens_per_s"] = round(ref.generate(ctx["prompt"], q.smoke_max_tokens).tokens_per_s, 2)
        finally:
            ref.close()
    log.info("[quantize] %s answers %r with %r (%.1f tokens/s)", q.name, q.smoke_prompt, gen.text, gen.tokens_per_s)

    tracker.log({f"quantize/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    tracker.table("quantize/smoke", [{"prompt": q.smoke_prompt, "answer": metrics["smoke_answer"]}])
    tracker.table("quantize/tradeoff", [{k: metrics.get(k) for k in (
        "scheme", "size_mb", "unquantized_mb", "seconds", "tokens_per_s", "unquantized_tokens_per_s")}])
    write_manifest(run_dir, "quantize", config_hash(cfg), inputs=inputs, outputs=outputs, metrics=metrics)
    result = {"method": q.name, **{k: str(v) for k, v in outputs.items() if k in ("gguf", "artifact")}, **metrics}
    return result
