"""What this machine's CPU is and can do: its model name and instruction-set flags (Linux's /proc/cpuinfo)."""
from __future__ import annotations

import platform
from functools import lru_cache

__all__ = ["cpu_description", "cpu_flags", "cpu_model", "has_native_bf16"]


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first value of each /proc/cpuinfo key (the first CPU's); empty where unreadable."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's model name (e.g. 'AMD EPYC'), else what the platform module says."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, amx_bf16, ...); empty where unknown."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_description() -> str:
    """Model name and the flags that decide the speed of convolutions, for benchmark reports."""
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in cpu_flags()]
    return f"{cpu_model()}, {' '.join(simd) or 'no AVX2'}"


def has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 products in hardware (AVX512-BF16 or AMX): elsewhere
    PyTorch emulates them, much slower than float32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
