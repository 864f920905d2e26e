"""Names and one-line descriptions of the cache policies (csrc/core/policy.h)."""

from __future__ import annotations

import math

DESCRIPTIONS = {
    "cpu": "every expert on the CPU, no cache (KTransformers' default)",
    "static": "fixed GPU set: the most used (layer, expert) pairs of a profile",
    "lru": "LRU cache; misses on the CPU, admitted by background copies",
    "lfu": "LFU cache; misses on the CPU, admitted by background copies",
    "lru-fetch": "LRU cache; every miss copied, then computed on the GPU (mixtral-offloading)",
    "value": "ours: decayed per-layer frequency x recency x router weight, next-layer prefetch, "
    "admission only when value beats the victim's value plus the copy cost",
    "oracle": "Belady with bypass (future known; simulator only): the hit-rate bound",
}


def policy_names() -> list[str]:
    """All policy names, in report order (the native list, so the two cannot drift apart)."""
    from hybrid_moe._native import native

    return list(native.engine_policy_names())


def parse_policies(spec: str | list[str]) -> list[str]:
    """'all', a comma list or a list -> validated names. Raises ValueError for an unknown name."""
    names = policy_names()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if items == ["all"]:
        return names
    for s in items:
        if s not in names:
            raise ValueError(f"unknown policy {s!r}: expected one of {names} or 'all'")
    if not items:
        raise ValueError(f"no policy given: expected one of {names} or 'all'")
    return items


# The value policy's tunables (ValueParams in csrc/core/policy.h; its comments give the defaults
# and why). Only stall_aware is a bool; the rest are numbers, range-checked in C++.
VALUE_PARAMS = (
    "halflife_steps",
    "horizon_steps",
    "weight_mix",
    "copy_factor",
    "horizon_lifetimes",
    "stall_aware",
    "stall_weight",
)


def check_value_params(params) -> dict:
    """None or {name: value} -> a validated dict for the native side. ValueError names an
    unknown key or a value of the wrong type; ranges are checked natively (also ValueError)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(f"value_params must be a dict or None, got {type(params).__name__}")
    out = {}
    for key, v in params.items():
        if key not in VALUE_PARAMS:
            raise ValueError(
                f"unknown value-policy parameter {key!r}: expected one of {list(VALUE_PARAMS)}"
            )
        if key == "stall_aware":
            if not isinstance(v, bool):
                raise ValueError(f"value_params['stall_aware'] must be a bool, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"value_params[{key!r}] must be a finite number, got {v!r}")
        out[key] = v if key == "stall_aware" else float(v)
    from hybrid_moe._native import native

    native.engine_check_value_params(out)  # ranges (the policy's own checks)
    return out


def parse_value_params(items: list[str] | None, flag: str = "--value-param") -> dict:
    """CLI form: ['stall_weight=1', 'stall_aware=false'] -> a validated dict; errors name flag."""
    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        if key == "stall_aware":
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(f"{flag} stall_aware expects true or false, got {text!r}")
            out[key] = low in ("true", "1")
        else:
            try:
                out[key] = float(text)
            except ValueError:
                raise ValueError(f"{flag} {key} expects a number, got {text!r}") from None
    return check_value_params(out)
