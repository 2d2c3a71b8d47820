"""Cost of a pipeline run: API spend from the collect ledger plus training compute, as the paper reports it."""

from __future__ import annotations

from typing import Any


def cost_report(stages: dict[str, dict[str, Any]], cost_cfg: dict[str, Any], trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """{"api_usd", "compute_hours", "accelerator_hours", "compute_usd", "total_usd"} for one pipeline run.

    `stages` is summary.json's `stages`; compute is the train stage's wall time x the accelerators it used x
    cost.price_per_accelerator_hour.
    """
    collect = stages.get("collect", {})
    api = float(collect.get("cost_usd") or 0.0)
    train_seconds = 0.0 if stages.get("train", {}).get("reused") else float(stages.get("train", {}).get("seconds") or 0.0)
    devices = trainer_cfg.get("devices", cost_cfg.get("accelerators", 1))
    n_acc = int(devices) if isinstance(devices, int) and devices > 0 else int(cost_cfg.get("accelerators") or 1)
    n_acc *= int(trainer_cfg.get("num_nodes") or 1)
    hours = train_seconds / 3600
    compute = hours * n_acc * float(cost_cfg.get("price_per_accelerator_hour") or 0.0)
    return {
        "api_usd": round(api, 4),
        "api_tokens": int(collect.get("prompt_tokens", 0)) + int(collect.get("completion_tokens", 0)),
        "accelerator": cost_cfg.get("accelerator", "cpu"),
        "accelerators": n_acc,
        "compute_hours": round(hours, 4),
        "accelerator_hours": round(hours * n_acc, 4),
        "compute_usd": round(compute, 4),
        "total_usd": round(api + compute, 4),
    }


def cost_line(c: dict[str, Any]) -> str:
    """One line shaped like the paper's "$800 GPU + $500 API"."""
    return (f"${c['compute_usd']:,.2f} compute ({c['accelerator_hours']:.3f} {c['accelerator']}-hours) + "
            f"${c['api_usd']:,.2f} API ({c['api_tokens']:,} tokens) = ${c['total_usd']:,.2f}")
