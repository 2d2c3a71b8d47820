"""Schemas of the quantize stage's nodes: `quant` and `quantize`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QuantSchema:
    name: str = "???"
    method: str = "gguf"  # gguf | gguf_lora | gptq | bnb | none
    # gguf / gguf_lora
    export_dtype: str = "f16"  # f16 | f32
    ftype: str | None = "q4_0"  # q4_0 | q4_1 | q5_0 | q8_0 | q4_k_m | null (the export itself)
    pre_tokenizer: str | None = None  # override tokenizer.ggml.pre, e.g. starcoder for GPT4All desktop <= 2.8
    require_chat_template: bool = True  # refuse to write a GGUF without tokenizer.chat_template
    check_template: bool = True  # the GGUF chat template must render model.template's prompt
    lora_tolerance: float = 0.02  # gguf_lora: max |logit diff| / max |logit| vs the merged GGUF
    # gptq
    bits: int = 4
    group_size: int = 64
    desc_act: bool = False
    damp_percent: float = 0.05
    calibration_samples: int = 128  # drawn from the train run's curated dataset
    calibration_max_tokens: int = 256
    # bnb
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = False
    compute_dtype: str = "float32"
    # every scheme: a greedy answer, its tokens/s, and the unquantized model's tokens/s for comparison
    smoke_prompt: str = "What is the capital of France?"
    smoke_max_tokens: int = 24
    measure_unquantized: bool = True
    n_threads: int = 1


@dataclass
class QuantizeSchema:
    model_dir: str | None = None  # a train run dir; null: the latest one


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "quant": QuantSchema,
    "quantize": QuantizeSchema,
}
