"""How far bf16 attention moves a training step: loss and LoRA gradients of one packed benchmark batch.

Four settings of the same LoRAModule (SmolLM2-135M, LoRA B randomised so the adapter matters, dropout off),
against float32 everywhere with the flash kernel per example (the reference):
- autocast + flash32: bf16 autocast, attention through the flash kernel in float32 (the previous CPU path);
- autocast + bf16 matmuls: bf16 autocast, the shipped CPU path;
- float32 + matmuls: no autocast, the shipped path in float32 (should equal the reference).
Prints the loss difference and the gradient's relative L2 difference and cosine; writes JSON.

    python experiments/train_throughput/attention_numerics.py --out experiments/train_throughput/attention_numerics.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gpt4all.bench.train import DEFAULT_DATA, LORA, load_pairs
from gpt4all.core.config import CONF_DIR
from gpt4all.core.models import load_model, load_tokenizer
from gpt4all.core.template import encode_pair, resolve_template
from gpt4all.train import attention
from gpt4all.train.batching import Collator, make_units
from gpt4all.train.module import LoRAModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/attention_numerics.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    model_cfg = OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml")
    cache = OmegaConf.load(CONF_DIR / "paths" / "default.yaml").cache_dir
    tok = load_tokenizer(model_cfg, cache)
    template = resolve_template(model_cfg.template, tok)
    enc = lambda t: tok.encode(t, add_special_tokens=False)
    examples = [dict(zip(("input_ids", "labels"), encode_pair(enc, template, p, r, 512)))
                for p, r in load_pairs(DEFAULT_DATA, 400)]
    batch = Collator(tok.pad_token_id, pack=True)(make_units(examples, "pack", 2, 512, 0)[:2])
    torch.manual_seed(0)
    module = LoRAModule(load_model(model_cfg, cache, seed=0), OmegaConf.create(LORA), lr=3e-4)
    module.on_fit_start()
    module.model.eval()  # dropout off: the settings see the same network
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    params = [p for p in module.parameters() if p.requires_grad]

    def run(autocast: bool, flash: bool) -> tuple[float, torch.Tensor]:
        attention.MATH_MAX_LENGTH = 0 if flash else 1024
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = module.loss(batch)
        loss.backward()
        return float(loss), torch.cat([p.grad.flatten() for p in params])

    ref_loss, ref_grad = run(autocast=False, flash=True)
    results = {}
    for name, autocast, flash in (("autocast + flash32", True, True), ("autocast + bf16 matmuls", True, False),
                                  ("float32 + matmuls", False, False)):
        loss, grad = run(autocast, flash)
        results[name] = {"loss": loss, "loss_diff": loss - ref_loss,
                         "grad_rel_l2": float((grad - ref_grad).norm() / ref_grad.norm()),
                         "grad_cosine": float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))}
    print(f"reference (float32, flash kernel): loss {ref_loss:.6f}")
    for name, r in results.items():
        print(f"{name:24} loss {r['loss']:.6f} ({r['loss_diff']:+.2e})  gradient rel. L2 {r['grad_rel_l2']:.4f}"
              f"  cosine {r['grad_cosine']:.6f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reference_loss": ref_loss, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
