"""CPU training helpers: cheaper LoRA dropout masks (measured beside torch's in
experiments/train_throughput/step_ab.py; on other devices the module is torch's nn.Dropout), and the precision
that is fastest on this CPU (`cpu_precision`).
"""

from __future__ import annotations

import torch

from gpt4all.core.cpu import native_bf16

DROPOUT_BITS = 15  # random bits per dropout decision: p is rounded to a multiple of 2**-15


class CPUDropout(torch.nn.Dropout):
    """nn.Dropout whose CPU mask takes 15 random bits per element from int64 draws (four elements per draw)
    instead of torch's CPU `bernoulli_` (one draw per element, single-threaded): about 2x faster than a
    `rand_like` mask and 3x faster than torch's dropout (experiments/train_throughput/step_ab.py). The drop
    probability is p rounded to a multiple of 2**-15 and kept elements are scaled by the exact
    1 / (1 - rounded p), so the expectation is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0 < self.p < 1 or self.inplace:
            return super().forward(x)
        levels = 1 << DROPOUT_BITS
        threshold = round(self.p * levels)
        draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()  # 63 uniform bits each
        uniform = draws.view(torch.int16)[: x.numel()].view(x.shape).bitwise_and_(levels - 1)
        # keep = 1 where uniform >= threshold, in int16 arithmetic (a CPU compare to bool and a bool cast are not
        # vectorised); times the float32 scale, so a bf16 input is not scaled by a rounded 1 / (1 - p)
        mask = uniform.sub_(threshold - 1).clamp_(0, 1) * (levels / (levels - threshold))
        return (x * mask).to(x.dtype)


def use_cpu_dropout(model: torch.nn.Module) -> int:
    """Swap the nn.Dropout modules of PEFT's `lora_dropout` dicts for CPUDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for key, drop in drops.items():
            if type(drop) is torch.nn.Dropout:
                drops[key] = CPUDropout(drop.p)
                swapped += 1
    return swapped


def cpu_precision(requested: str | int | None = "auto", flags: set[str] | None = None) -> str:
    """Lightning precision for CPU training: `requested` unless it is "auto"/None, else the faster one for this
    CPU: "bf16-mixed" with native bf16 (gpt4all.core.cpu.native_bf16), "32-true" otherwise."""
    if requested not in (None, "auto"):
        return str(requested)
    return "bf16-mixed" if native_bf16(flags) else "32-true"
