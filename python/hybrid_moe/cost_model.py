"""Hardware profiles and the cost model (csrc/core/cost_model.h).

A profile is JSON (schema in hybrid_moe/profiles/README.md). `load_profile(name_or_path)` returns
it as a dict, validated; `cost_model(profile, fmt, hidden, intermediate)` returns the native
CostModel with t_cpu(n), t_gpu(n), t_copy() in microseconds and refine(resource, n, observed_us).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
# Where `hybrid-moe calibrate` writes profiles by default; load_profile finds them by name too.
USER_PROFILE_DIR = Path(
    os.environ.get("HYBRID_MOE_PROFILE_DIR") or Path.home() / ".cache" / "hybrid_moe" / "profiles"
)
SCHEMA = "hybrid-moe-profile/1"

# (json path, flat key for the native side)
_FIELDS = (
    (("cpu", "dram_read_gbps"), "dram_read_gbps"),
    (("cpu", "expert_overhead_us"), "cpu_overhead_us"),
    (("gpu", "vram_gbps"), "vram_gbps"),
    (("gpu", "expert_overhead_us"), "gpu_overhead_us"),
    (("gpu", "layer_overhead_us"), "gpu_layer_overhead_us"),
    (("copy", "h2d_gbps"), "h2d_gbps"),
    (("copy", "latency_us"), "copy_latency_us"),
    (("layer_fixed_us",), "layer_fixed_us"),
)
_FORMAT_FIELDS = ("cpu_efficiency", "cpu_tflops", "gpu_tflops")
# Optional section "decode" (default 0 each): the live decode path, measured from the runtime's
# timeline (bench/RESULTS.md), not by calibrate's kernel runs.
_DECODE_FIELDS = ("decode_gpu_layer_us", "copy_stall_fraction")
FORMATS = ("bf16", "q8_0")


def list_profiles() -> list[str]:
    """Names of the shipped profiles (files in hybrid_moe/profiles without .json) and of the
    calibrated ones in USER_PROFILE_DIR."""
    return sorted({p.stem for d in (PROFILE_DIR, USER_PROFILE_DIR) for p in d.glob("*.json")})


def load_profile(name_or_path: str | Path | dict) -> dict[str, Any]:
    """A profile by shipped name ('consumer-4090', 'h200-lent'), by path to a JSON file, or a dict
    (validated and returned). Raises ValueError naming the missing or bad key, or the known
    names."""
    if isinstance(name_or_path, dict):
        data = name_or_path
    else:
        path = Path(name_or_path)
        if not (path.suffix == ".json" or path.exists()):
            path = PROFILE_DIR / f"{name_or_path}.json"
            if not path.exists():
                path = USER_PROFILE_DIR / f"{name_or_path}.json"
            if not path.exists():
                raise ValueError(
                    f"unknown profile {str(name_or_path)!r}: expected one of {list_profiles()} "
                    "or a path to a profile JSON file"
                )
        if not path.exists():
            raise ValueError(f"profile file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"profile {str(path)!r} is not valid JSON: {exc}") from exc
    to_native(data)  # validates
    return data


def _get(data: dict, keys: tuple[str, ...]) -> float:
    cur: Any = data
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise ValueError(f"profile {data.get('name', '?')!r} is missing '{'.'.join(keys)}'")
        cur = cur[k]
    try:
        value = float(cur)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"profile key '{'.'.join(keys)}' must be a number, got {cur!r}") from exc
    if value < 0:
        raise ValueError(f"profile key '{'.'.join(keys)}' must be >= 0, got {value}")
    return value


def to_native(profile: dict) -> dict[str, Any]:
    """The flat dict the native bindings take (hybrid_moe._C.CostModel / simulate)."""
    if profile.get("schema", SCHEMA) != SCHEMA:
        raise ValueError(f"profile schema must be {SCHEMA!r}, got {profile.get('schema')!r}")
    flat: dict[str, Any] = {"name": str(profile.get("name", "unnamed"))}
    for keys, flat_key in _FIELDS:
        flat[flat_key] = _get(profile, keys)
    for fmt in FORMATS:
        for f in _FORMAT_FIELDS:
            flat[f"{fmt}_{f}"] = _get(profile, ("formats", fmt, f))
    # Optional (profiles written before 2026-11-28 lack them): the live decode path's costs.
    decode = profile.get("decode", {})
    for key in _DECODE_FIELDS:
        flat[key] = _get(profile, ("decode", key)) if key in decode else 0.0
    if flat["copy_stall_fraction"] > 2:
        raise ValueError(
            f"profile key 'decode.copy_stall_fraction' must be in [0, 2], got "
            f"{flat['copy_stall_fraction']}"
        )
    for fmt in FORMATS:
        eff = flat[f"{fmt}_cpu_efficiency"]
        if not 0 < eff <= 1:
            raise ValueError(
                f"profile key 'formats.{fmt}.cpu_efficiency' must be in (0, 1], got {eff}"
            )
    for k in ("dram_read_gbps", "vram_gbps", "h2d_gbps"):
        if flat[k] <= 0:
            raise ValueError(f"profile key {k!r} must be > 0, got {flat[k]}")
    return flat


def cost_model(profile: str | Path | dict, fmt: str, hidden: int, intermediate: int):
    """The native CostModel for one expert shape: t_cpu(n), t_gpu(n), t_copy() in us;
    refine('cpu'|'gpu'|'copy', n_tokens, observed_us, alpha=0.1) learns from observed times."""
    from hybrid_moe._native import native

    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}: expected one of {FORMATS}")
    return native.CostModel(to_native(load_profile(profile)), fmt, int(hidden), int(intermediate))
