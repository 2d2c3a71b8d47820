"""Schemas of the evaluate stage's nodes: `eval` and `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalFieldsSchema:
    """Field names of a `jsonl` suite's records (input may be null: no input)."""
    id: str | None = "id"
    instruction: str = "instruction"
    input: str | None = "input"
    output: str = "output"


@dataclass
class EvalSchema:
    name: str = "???"
    format: str = "pairs"  # pairs | self_instruct | jsonl (with `fields`)
    path: str | None = None  # local JSONL; null: bundled sample (pairs) or the hub (self_instruct)
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    fields: EvalFieldsSchema = field(default_factory=EvalFieldsSchema)
    limit: int | None = None
    method: str = "conditional"  # conditional | gpt4all_2023 (the original script's arithmetic)
    clip: float = 100.0
    nan_perplexity: float | None = None  # perplexity given to a NaN score; null: clip (conditional), 0 (gpt4all_2023)
    batch_size: int = 4
    max_length: int = 512
    n_threads: int = 1
    n_ctx: int = 2048  # llama.cpp context for GGUF models


@dataclass
class ModelSpecSchema:
    """One model to score: kind base | hf | peft | gguf | gptq | bnb | run_dir."""
    kind: str = "???"
    path: str | None = None  # HF dir, adapter dir, GGUF file, GPTQ / nf4 checkpoint, or a train/quantize run dir
    base: str | None = None  # peft: base HF dir (null: the configured `model`)
    lora: str | None = None  # gguf: a LoRA GGUF applied at load time
    template: dict[str, str] | None = None  # {prompt, response_suffix}; null: the run's, else model.template
    reference: str | None = None  # the unquantized model in the same engine (GGUF file / HF dir): adds its KLD


@dataclass
class EvaluateSchema:
    include_base: bool = True
    train_dir: str | None = None  # add the finetuned model of this train run
    quantize_dir: str | None = None  # add the quantized model of this quantize run
    latest: bool = False  # add the latest train and quantize runs when their dirs are null
    models: dict[str, ModelSpecSchema] = field(default_factory=dict)  # any further models, keyed by display name
    compare: list[list[str]] = field(default_factory=list)  # [a, b]: test "a lower than b"; empty: automatic pairs
    paired: bool = True  # Wilcoxon signed-rank on the same examples; false: Mann-Whitney U
    alpha: float = 0.05  # significance level printed beside each test
    kld: bool = True  # KL divergence of each quantized model to its unquantized reference (same engine)


# config node -> schema; gpt4all.core.config validates every node listed here
SCHEMAS: dict[str, type] = {
    "eval": EvalSchema,
    "evaluate": EvaluateSchema,
}
