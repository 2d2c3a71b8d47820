"""What this CPU is: model name and feature flags from /proc/cpuinfo (benchmarks record them; training picks
its precision from them)."""

from __future__ import annotations

import os
import platform
from typing import Any

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 matmuls: AMX tiles, AVX512-BF16
RECORDED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "fma")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _field(cpuinfo: str, *keys: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    return set(_field(_cpuinfo() if cpuinfo is None else cpuinfo, "flags", "Features").split())


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16). Elsewhere torch emulates bf16 and fp32 is
    several times faster (8x for a SmolLM2-shaped matmul on an AVX2-only EPYC, issue 15)."""
    return bool((cpu_flags() if flags is None else flags) & set(BF16_FLAGS))


def describe() -> dict[str, Any]:
    """CPU model, the flags that decide matmul speed, core count and the 1-minute load average (for records)."""
    info = _cpuinfo()
    flags = cpu_flags(info)
    return {"cpu": _field(info, "model name") or platform.processor(), "cpus": os.cpu_count(),
            "flags": [f for f in RECORDED_FLAGS if f in flags], "native_bf16": native_bf16(flags),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}
