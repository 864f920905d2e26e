"""Names and one-line descriptions of the cache policies (csrc/core/policy.h)."""

from __future__ import annotations

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
