"""What was built and what this machine offers: version, CUDA, GPU, CPU ISA, threads."""

from __future__ import annotations

import os
from typing import Any

from hybrid_moe._native import native


def cuda_available() -> bool:
    """True when the CUDA parts were built and at least one CUDA device is usable."""
    return bool(native.cuda_built) and native.cuda_device_count()[0] > 0


def set_cpu_isa(name: str) -> dict[str, str]:
    """Cap the CPU kernel variant ('generic', 'avx2', 'avx512', 'amx' or 'auto').

    Raises ValueError for an unknown name or a variant this machine or build cannot run.
    Returns {'isa': chosen variant, 'reason': why}.
    """
    if not isinstance(name, str):
        raise TypeError(f"set_cpu_isa: name must be a str, got {type(name).__name__}")
    return dict(native.set_cpu_isa(name))


def default_threads() -> int:
    """Threads the CPU kernels use by default: HYBRID_MOE_THREADS, else the physical cores."""
    env = os.environ.get("HYBRID_MOE_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"HYBRID_MOE_THREADS={env!r} is not an integer") from None
        if n < 1:
            raise ValueError(f"HYBRID_MOE_THREADS={env!r} must be >= 1")
        return n
    return int(native.physical_cores())


def info() -> dict[str, Any]:
    """Version, CUDA build and devices, CPU features, the ISA chosen and why, thread count."""
    count, why_none = native.cuda_device_count()
    runtime_v, driver_v = native.cuda_versions()
    isa = dict(native.cpu_isa())
    feats = dict(native.cpu_features())
    return {
        "version": native.__version__,
        "cuda_built": bool(native.cuda_built),
        "cuda_available": bool(native.cuda_built) and count > 0,
        "cuda_runtime_version": _cuda_version_str(runtime_v),
        "cuda_driver_version": _cuda_version_str(driver_v),
        "cuda_unavailable_reason": "" if count > 0 else why_none,
        "gpus": [dict(d) for d in native.cuda_devices()] if count > 0 else [],
        "cpu_brand": feats.pop("brand"),
        "cpu_vendor": feats.pop("vendor"),
        "cpu_features": feats,
        "cpu_variants_built": ["generic"]
        + (["avx2"] if native.avx2_built else [])
        + (["avx512"] if native.avx512_built else [])
        + (["amx"] if native.amx_built else []),
        "cpu_isa": isa["isa"],
        "cpu_isa_reason": isa["reason"],
        # how a runtime keeps Q8_0 experts on the host (HYBRID_MOE_Q8_ROWS16)
        "q8_0_host_packing": str(native.cpu_host_row_packing("q8_0")),
        "threads": default_threads(),
        "physical_cores": int(native.physical_cores()),
        "logical_cpus": os.cpu_count(),
    }


def _cuda_version_str(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"
