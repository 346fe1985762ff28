"""The machine record that benchmark results carry."""

from __future__ import annotations

import os
import platform

from isacir.bench.machine import _VECTOR_FLAGS, cpu_info


def test_cpu_info_names_this_machine():
    info = cpu_info()
    assert info["machine"] == platform.machine() and info["logical_cpus"] == os.cpu_count()
    assert info["model"]
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            lines = [line.split(":", 1) for line in f if ":" in line]
        models = {v.strip() for k, v in lines if k.strip().lower() in ("model name", "cpu model")}
        flags = {f for k, v in lines if k.strip().lower() in ("flags", "features") for f in v.split()}
        assert not models or info["model"] in models
        assert info["vector_extensions"] == [f for f in _VECTOR_FLAGS if f in flags]
