"""Quantization schemes: each is one class here (or anywhere importable) and one YAML in conf/quant/ that names
it with `_target_`, as the curation filters are. The class's fields are the scheme's config schema (a key it
does not have is refused, naming it); `check` rejects bad input before any file is written, `make` writes the
artifact, `load` opens it for scoring and generation, and `make` names the unquantized reference in the same
engine (f16 GGUF in llama.cpp, the merged HF model in transformers) that KL divergence is measured against.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gpt4all.core.lm import GGUFLM, HFLM, Spec, load_lm
from gpt4all.quantize import imatrix as im
from gpt4all.quantize.convert import check_architecture, export_gguf, export_lora_gguf, set_metadata
from gpt4all.quantize.gguf import QUANT_TYPES, quantize_gguf
from gpt4all.quantize.gguf_check import check_metadata, check_written, has_chat_template, text_chat_template
from gpt4all.quantize.hf_quant import calibration_texts, weights_size_mb

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")


@dataclass
class Job:
    """What a scheme works from: the train run (manifest, merged model, template) and where to write."""
    cfg: DictConfig
    run_dir: Path
    train_dir: Path
    train: dict[str, Any]
    merged: Path
    template: Any
    prompt: str

    @property
    def dataset(self) -> str:
        return self.train["inputs"]["dataset"]


@dataclass
class Made:
    """A scheme's result: the artifact as a model, its reference, files written and metrics."""
    model: Spec
    reference: Spec | None
    outputs: dict[str, Any]
    metrics: dict[str, Any]


@dataclass
class Scheme:
    """Base class; subclasses add their own fields (the YAML sets them) and implement `make`."""
    name: str = "???"
    smoke_prompt: str = "What is the capital of France?"
    smoke_max_tokens: int = 24
    measure_unquantized: bool = True  # also time fp32 HF generation of the merged model
    n_threads: int = 1

    def check(self, job: Job) -> None:
        """Reject bad input before any file is written (default: nothing to check)."""

    def make(self, job: Job) -> Made | None:
        raise NotImplementedError

    @classmethod
    def load(cls, spec: Spec, n_threads: int = 1, n_ctx: int = 2048) -> HFLM | GGUFLM:
        """The artifact as a model that scores and generates (default: by its engine, gguf or hf)."""
        return load_lm(spec, n_threads=n_threads, n_ctx=n_ctx)


def export_model(model_dir: Path, out: Path, dtype: str = "f16", model_name: str | None = None) -> Path:
    """The one call to the HF -> GGUF exporter (schemes and the benchmark): llama.cpp's convert_hf_to_gguf.py."""
    return export_gguf(model_dir, out, dtype, model_name=model_name)


def export_checked(job: Job, model_dir: Path, out: Path, dtype: str = "f16", pre_tokenizer: str | None = None,
                   require_chat_template: bool = True, check_template: bool = True) -> Path:
    """Export with llama.cpp's converter, write the training format as the chat template when the model has none,
    then check the file (tokenizer, special tokens, chat template, loads in llama.cpp); a failing file is deleted."""
    path = export_model(model_dir, out, dtype, model_name=job.cfg.model.name)
    try:
        chat = None if has_chat_template(path) else text_chat_template(job.template)
        if chat:
            log.info("[quantize] %s has no chat template: writing the training format as one", path.name)
        if chat or pre_tokenizer:
            set_metadata(path, pre_tokenizer=pre_tokenizer, chat_template=chat)
        found = check_metadata(path, job.template if check_template else None, require_chat_template)
        tokenizer_dir = model_dir if (Path(model_dir) / "tokenizer.json").exists() else None
        check_written(path, tokenizer_dir, found)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


@dataclass
class GGUFScheme(Scheme):
    """Merged model -> GGUF (export_dtype) -> `ftype` with llama.cpp, optionally with an importance matrix."""
    export_dtype: str = "f16"  # f16 | f32
    ftype: str | None = "q4_0"  # see gpt4all.quantize.gguf.QUANT_TYPES; null: the export itself
    pre_tokenizer: str | None = None  # override tokenizer.ggml.pre, e.g. starcoder for GPT4All desktop <= 2.8
    require_chat_template: bool = True
    check_template: bool = True
    imatrix: Any = False  # false | true: computed from the train run's curated pairs | PATH of a GGUF imatrix
    imatrix_samples: int = 512  # curated pairs in the calibration text
    imatrix_ctx: int = 512  # tokens per chunk (llama-imatrix -c); the text needs at least two chunks

    def check(self, job: Job) -> None:
        check_architecture(job.merged)
        if self.ftype is not None and self.ftype not in QUANT_TYPES:
            raise ValueError(f"quant.ftype={self.ftype!r} is not a llama.cpp scheme here; valid: {', '.join(QUANT_TYPES)}")
        if not isinstance(self.imatrix, (bool, str)):
            raise ValueError(f"quant.imatrix must be true, false or a path, got {self.imatrix!r}")
        if self.imatrix is not False and self.ftype is None:
            raise ValueError("quant.imatrix needs a quantized quant.ftype (the f16 export uses no matrix)")
        if self.ftype in im.REQUIRES_IMATRIX and self.imatrix is False:
            raise ValueError(f"quant.ftype={self.ftype}: llama.cpp refuses this scheme for "
                             f"{im.model_config(job.merged).get('model_type')} weights without an importance "
                             f"matrix; set quant.imatrix=true")
        if isinstance(self.imatrix, str):
            im.check_imatrix(self.imatrix, im.model_config(job.merged))
        elif self.imatrix:
            self._calibration(job)

    def _calibration(self, job: Job) -> im.Calibration:
        from transformers import AutoTokenizer

        texts = calibration_texts(job.dataset, job.template, self.imatrix_samples, job.cfg.seed) \
            if Path(job.dataset).exists() else []
        tok = AutoTokenizer.from_pretrained(str(job.merged))
        return im.calibration(texts, job.dataset, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                              self.imatrix_ctx)

    def make(self, job: Job) -> Made:
        exported = export_checked(job, job.merged, job.run_dir / f"model-{self.export_dtype}.gguf", self.export_dtype,
                              self.pre_tokenizer, self.require_chat_template, self.check_template)
        outputs: dict[str, Any] = {"gguf_" + self.export_dtype: exported}
        metrics: dict[str, Any] = {"label": self.ftype or self.export_dtype, "export_mb": weights_size_mb(exported)}
        final = exported
        if self.ftype:
            final = job.run_dir / f"model-{self.ftype}.gguf"
            if self.imatrix is False:
                quantize_gguf(exported, final, self.ftype)
            else:
                info = im.check_imatrix(self.imatrix, im.model_config(job.merged)) if isinstance(self.imatrix, str) \
                    else im.compute_imatrix(exported, self._calibration(job), job.run_dir, self.imatrix_ctx,
                                            self.n_threads)
                im.quantize_with_imatrix(exported, final, self.ftype, Path(info["path"]), im.provenance_kv(info),
                                         self.n_threads)
                outputs["imatrix"] = info["path"]
                metrics["imatrix"] = info
                metrics["label"] = f"{self.ftype}+imatrix"
            outputs["gguf_" + self.ftype] = final
        outputs["gguf"] = final
        metrics["gguf_mb"] = weights_size_mb(final)
        reference = Spec("gguf", str(exported)) if self.ftype else None
        return Made(Spec("gguf", str(final)), reference, outputs, metrics)


@dataclass
class GGUFLoraScheme(Scheme):
    """The adapter alone as a llama.cpp LoRA GGUF over the base model's f16 GGUF, checked against the merged GGUF."""
    export_dtype: str = "f16"
    pre_tokenizer: str | None = None
    require_chat_template: bool = True
    check_template: bool = True
    lora_tolerance: float = 0.02  # max |logit diff| / max |logit| vs the merged GGUF

    def check(self, job: Job) -> None:
        used = job.train["inputs"].get("model")
        if used not in (None, job.cfg.model.name):
            raise ValueError(f"quant=gguf_lora rebuilds the base model from model={job.cfg.model.name}, but the train "
                             f"run {job.train_dir} used model={used}: pass model={used}")
        check_architecture(job.merged)

    def make(self, job: Job) -> Made:
        from gpt4all.core.models import load_model
        from gpt4all.quantize.gguf_lora import compare_with_merged

        cfg, d = job.cfg, job.run_dir
        opts = (self.export_dtype, self.pre_tokenizer, self.require_chat_template, self.check_template)
        base_dir = d / "base_hf"
        load_model(cfg.model, cfg.paths.cache_dir, seed=cfg.seed).save_pretrained(base_dir)
        for name in TOKENIZER_FILES:   # the converter reads the base's tokenizer beside its config
            if (job.merged / name).is_file():
                shutil.copy2(job.merged / name, base_dir / name)
        try:
            base = export_checked(job, base_dir, d / f"base-{self.export_dtype}.gguf", *opts)
            lora = export_lora_gguf(Path(job.train["outputs"]["adapter"]), base_dir, d / "adapter-lora.gguf")
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)
        merged = export_checked(job, job.merged, d / f"merged-{self.export_dtype}.gguf", *opts)
        check = compare_with_merged(base, lora, merged, job.prompt, max_tokens=self.smoke_max_tokens,
                                    n_threads=self.n_threads)
        log.info("[quantize] base + LoRA GGUF vs merged GGUF: %s", check)
        if check["rel_logit_diff"] > self.lora_tolerance:
            raise RuntimeError(f"{lora}: base + LoRA logits differ from the merged GGUF by {check['rel_logit_diff']:.4f} "
                               f"of the logit range (quant.lora_tolerance={self.lora_tolerance}): the export is wrong")
        if not check["same_answer"]:
            log.warning("[quantize] base + LoRA and merged GGUF answer differently (f16 rounding on a near-tie)")
        outputs = {"base_gguf": base, "lora_gguf": lora, "merged_gguf": merged}
        metrics = {"label": "lora_gguf", "lora_mb": weights_size_mb(lora), "base_mb": weights_size_mb(base),
                   "lora_max_logit_diff": check["max_logit_diff"], "lora_same_answer": check["same_answer"]}
        return Made(Spec("gguf", str(base), lora=str(lora)), Spec("gguf", str(merged)), outputs, metrics)


@dataclass
class GPTQScheme(Scheme):
    """GPTQ with gptqmodel, calibrated on the train run's curated pairs; loads with transformers."""
    bits: int = 4
    group_size: int = 64  # must divide the hidden sizes (SmolLM2: 576 and 1536)
    desc_act: bool = False
    damp_percent: float = 0.05
    calibration_samples: int = 128
    calibration_max_tokens: int = 256

    def make(self, job: Job) -> Made:
        from gpt4all.quantize.hf_quant import gptq_quantize

        texts = calibration_texts(job.dataset, job.template, self.calibration_samples, job.cfg.seed)
        log.info("[quantize] GPTQ %d-bit, group %d, desc_act %s, %d calibration samples", self.bits, self.group_size,
                 self.desc_act, len(texts))
        out = gptq_quantize(job.merged, job.run_dir / f"gptq-{self.bits}bit", texts, bits=self.bits,
                            group_size=self.group_size, desc_act=self.desc_act, damp_percent=self.damp_percent,
                            max_tokens=self.calibration_max_tokens, cache_dir=job.cfg.paths.cache_dir)
        return Made(Spec("gptq", str(out)), Spec("hf", str(job.merged)), {},
                    {"label": f"gptq_{self.bits}bit", "calibration_samples": len(texts)})


@dataclass
class BnbScheme(Scheme):
    """bitsandbytes 4-bit (nf4 or fp4); the checkpoint loads with transformers (CPU works)."""
    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str = "float32"

    def make(self, job: Job) -> Made:
        from gpt4all.quantize.hf_quant import bnb_quantize

        out = bnb_quantize(job.merged, job.run_dir / f"bnb-{self.quant_type}", self.quant_type, self.double_quant,
                           self.compute_dtype)
        return Made(Spec("bnb", str(out)), Spec("hf", str(job.merged)), {}, {"label": self.quant_type})


@dataclass
class NoQuant(Scheme):
    """No artifact: quantize only records the merged model."""

    def make(self, job: Job) -> None:
        return None
