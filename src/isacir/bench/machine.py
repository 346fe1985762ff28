"""The machine a benchmark ran on, recorded beside its numbers.

Speed ratios depend on the CPU's vector extensions, and the results of a training run on its last
float bits, which differ from one CPU model to the next: a result file says which CPU made it.
"""

from __future__ import annotations

import os
import platform

#: the CPU features that decide how fast int8 and fp32 kernels run
_VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
)


def cpu_info() -> dict:
    """The CPU model and its vector extensions (speed ratios and the last float bits of a
    training run depend on them)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "vector_extensions": [f for f in _VECTOR_FLAGS if f in flags],
    }
