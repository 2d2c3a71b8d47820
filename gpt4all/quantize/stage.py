"""quantize: setup (find the merged model) -> run (GGUF export, llama.cpp quantization, smoke test) -> save."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt4all.core.config import config_hash, latest_run
from gpt4all.core.manifest import read_manifest, write_manifest
from gpt4all.core.template import render_prompt
from gpt4all.core.tracking import Tracker
from gpt4all.quantize.gguf import export_gguf, generate, quantize_gguf

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    train_dir = Path(cfg.quantize.model_dir) if cfg.quantize.model_dir else latest_run(cfg.paths.output_dir, "train")
    train = read_manifest(train_dir, "train")
    merged = Path(train["outputs"]["merged"])
    q = cfg.quant
    inputs = {"train_dir": train_dir, "merged": merged, "template": train["inputs"]["template"]}
    if q.method == "none":
        write_manifest(run_dir, "quantize", config_hash(cfg), inputs=inputs, outputs={"model": merged})
        return {"method": "none", "model": str(merged)}
    if q.method != "gguf":
        raise ValueError(f"quant.method must be 'gguf' or 'none', got {q.method!r}")
    source = train["inputs"].get("gguf_source")
    if not source:
        raise ValueError(
            f"{train_dir}: the model did not come from a GGUF, so there is no tokenizer metadata to copy; "
            "convert it with llama.cpp's convert_hf_to_gguf.py or use quant=none"
        )

    exported = export_gguf(merged, run_dir / f"model-{q.export_dtype}.gguf", Path(source), dtype=q.export_dtype)
    outputs: dict[str, Any] = {"gguf_" + q.export_dtype: exported}
    final = exported
    if q.ftype:
        final = quantize_gguf(exported, run_dir / f"model-{q.ftype}.gguf", q.ftype)
        outputs["gguf_" + q.ftype] = final
    outputs["gguf"] = final
    prompt = render_prompt(OmegaConf.create(train["inputs"]["template"]), q.smoke_prompt)
    answer = generate(final, prompt, max_tokens=q.smoke_max_tokens, n_threads=q.n_threads)
    log.info("[quantize] %s answers %r with %r", final.name, q.smoke_prompt, answer)

    sizes = {k: round(Path(v).stat().st_size / 2**20, 2) for k, v in outputs.items() if k != "gguf"}
    answer = " ".join(answer.split())
    metrics = {"gguf_mb": sizes["gguf_" + (q.ftype or q.export_dtype)], "export_mb": sizes["gguf_" + q.export_dtype],
               "smoke_answer": answer}
    tracker.log({f"quantize/{k}": v for k, v in metrics.items() if k != "smoke_answer"})
    tracker.table("quantize/smoke", [{"prompt": q.smoke_prompt, "answer": answer}])
    write_manifest(run_dir, "quantize", config_hash(cfg), inputs=inputs, outputs=outputs, metrics=metrics)
    return {"method": q.name, "gguf": str(final), **metrics}
