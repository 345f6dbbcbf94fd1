"""What the benchmarks print about the machine they ran on. Stdlib only."""

from __future__ import annotations

import platform
from pathlib import Path

# The vector extensions the products' kernels choose between (fbgemm, oneDNN), widest first.
VECTOR_FLAGS = ("avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, with its family/model and vector extensions (the model
    name alone can hide the generation: a VM may report just "AMD EPYC"); else what platform knows."""
    try:
        info: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
        if "model name" in info:
            flags = set(info.get("flags", "").split())
            vector = [f for f in VECTOR_FLAGS if f in flags] or ["no AVX2"]
            return (f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
                    f"{', '.join(vector)})")
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
