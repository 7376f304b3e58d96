"""What this machine's CPU can do: its instruction-set flags (Linux's /proc/cpuinfo)."""
from __future__ import annotations

from functools import lru_cache

__all__ = ["cpu_flags", "has_native_bf16"]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, amx_bf16, ...); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 products in hardware (AVX512-BF16 or AMX): elsewhere
    PyTorch emulates them, much slower than float32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
