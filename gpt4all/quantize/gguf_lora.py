"""Check a llama.cpp LoRA GGUF (written by gpt4all.quantize.convert.export_lora_gguf) applied at load time to the
base model's GGUF against the merged model's GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
