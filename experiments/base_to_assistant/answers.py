"""Greedy answers of the base, finetuned and q4_0 models of one pipeline run to fixed prompts, side by side.

Usage: python experiments/base_to_assistant/answers.py outputs/pipeline/<time> > answers.md
Every model gets the training template (train manifest), so the base model sees the same prompt format.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from gpt4all.core.lm import Spec, load_lm, resolve_run_dir
from gpt4all.core.manifest import read_manifest
from gpt4all.core.template import render_prompt

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Give three tips for staying healthy.",
    "Explain what a binary search does in two sentences.",
    "Write a short, polite email declining a meeting invitation.",
]


def main(run: Path, max_tokens: int = 64) -> None:
    cfg = OmegaConf.load(run / "train" / "config.yaml")
    template = read_manifest(run / "train", "train")["inputs"]["template"]
    specs = {"base": Spec("base", template=template), "finetuned": resolve_run_dir(run / "train"),
             "finetuned q4_0 (llama.cpp)": resolve_run_dir(run / "quantize")}
    answers: dict[str, list[str]] = {}
    for name, spec in specs.items():
        lm = load_lm(spec, model_cfg=cfg.model, cache_dir=cfg.paths.cache_dir, n_ctx=512)
        try:
            answers[name] = [" ".join(lm.generate(render_prompt(template, p), max_tokens).text.split())
                             for p in PROMPTS]
        finally:
            lm.close()
    print(f"| prompt | {' | '.join(answers)} |\n|---|{'---|' * len(answers)}")
    for i, prompt in enumerate(PROMPTS):
        cells = [a[i].replace("|", "\\|") or "(empty)" for a in answers.values()]
        print(f"| {prompt} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
