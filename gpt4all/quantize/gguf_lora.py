"""A PEFT LoRA adapter as a llama.cpp LoRA GGUF (convert_lora_to_gguf.py's conventions), applied at run time to
the base model's GGUF: `llama-cli -m base.gguf --lora adapter.gguf`, `Llama(model_path=..., lora_path=...)`."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.torch import load_file

from gpt4all.quantize.gguf import ARCH, _permute, gguf_writer

PEFT_PREFIX = "base_model.model."


def export_lora_gguf(adapter_dir: Path, base_config: Path, out_path: Path, dtype: str = "f32") -> Path:
    """Write `adapter_dir` (PEFT, safetensors) as a LoRA GGUF for the Llama described by `base_config`
    (config.json). Tensors are `blk.N.<name>.weight.lora_a` [r, in] and `.lora_b` [out, r]; q/k lora_b rows are
    permuted like the base weights; metadata general.type=adapter, adapter.type=lora, adapter.lora.alpha."""
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter_dir}: peft_type {acfg.get('peft_type')!r} is not LORA")
    if acfg.get("use_rslora") or acfg.get("use_dora"):
        raise ValueError(f"{adapter_dir}: rsLoRA/DoRA adapters have no llama.cpp LoRA equivalent; use the merged GGUF")
    cfg = json.loads(Path(base_config).read_text())
    n_layers, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no adapter safetensors in {adapter_dir}")
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    tmap = gguf.get_tensor_name_map(ARCH, n_layers)
    tensors: dict[str, np.ndarray] = {}
    ranks = set()
    for key, value in state.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ValueError(f"{adapter_dir}: tensor {key!r} is not a LoRA A/B matrix (modules_to_save is not "
                             "supported by llama.cpp adapters)")
        side = "a" if ".lora_A." in key else "b"
        hf_name = key.removeprefix(PEFT_PREFIX).replace(f".lora_{side.upper()}.weight", ".weight")
        name = tmap.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"{adapter_dir}: cannot map {hf_name!r} to a GGUF tensor name")
        t = value.float()
        if side == "b" and hf_name.endswith("q_proj.weight"):
            t = _permute(t, n_head)
        elif side == "b" and hf_name.endswith("k_proj.weight"):
            t = _permute(t, n_kv)
        ranks.add(t.shape[0] if side == "a" else t.shape[1])
        arr = t.numpy()
        tensors[f"{name}.lora_{side}"] = arr.astype(np.float16) if dtype == "f16" else arr
    if len(ranks) != 1:
        raise ValueError(f"{adapter_dir}: mixed LoRA ranks {sorted(ranks)}")
    alpha = float(acfg.get("lora_alpha", next(iter(ranks))))

    with gguf_writer(out_path) as writer:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        writer.add_string("general.name", f"LoRA adapter r{next(iter(ranks))} alpha{alpha:g}")
        for name in sorted(tensors):
            writer.add_tensor(name, np.ascontiguousarray(tensors[name]))
    return out_path


def compare_with_merged(base_gguf: Path, lora_gguf: Path, merged_gguf: Path, prompt: str, max_tokens: int = 16,
                        n_threads: int = 1) -> dict[str, float | bool | str]:
    """Logits of base + LoRA (applied at load time) vs. the merged GGUF on `prompt`, and both greedy answers."""
    from gpt4all.core.llamacpp import Llama

    out: dict[str, float | bool | str] = {}
    answers, logits = [], []
    for kwargs in ({"model_path": str(base_gguf), "lora_path": str(lora_gguf)}, {"model_path": str(merged_gguf)}):
        llm = Llama(**kwargs, logits_all=True, n_ctx=512, n_threads=n_threads, verbose=False)
        try:
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            llm.eval(ids)
            logits.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
            llm.reset()
            answers.append(llm(prompt, max_tokens=max_tokens, temperature=0.0)["choices"][0]["text"])
        finally:
            llm.close()
    diff = float(np.abs(logits[0] - logits[1]).max())
    out["max_logit_diff"] = round(diff, 5)
    out["rel_logit_diff"] = round(diff / float(np.abs(logits[1]).max()), 6)
    out["same_argmax"] = bool((logits[0].argmax(-1) == logits[1].argmax(-1)).all())
    out["same_answer"] = answers[0] == answers[1]
    out["answer"] = answers[0]
    return out
