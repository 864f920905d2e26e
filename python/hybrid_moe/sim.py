"""Trace-driven simulation of the decision engine (csrc/core/simulator.h).

    from hybrid_moe.traces import load_trace
    from hybrid_moe.sim import simulate
    r = simulate(load_trace("route.csv"), "consumer-4090", "value", "10%")
    r["tokens_per_s"], r["hit_rate"]

The same C++ cache, policies, cost model and scheduler the runtime uses replay the trace with the
timelines of a hardware profile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_moe.cost_model import FORMATS, load_profile, to_native
from hybrid_moe.policies import check_value_params, policy_names
from hybrid_moe.trace_model import RouteTrace

DEFAULT_PREDICTOR_ACCURACY = 0.8
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_budget(budget: int | float | str, n_experts_total: int, expert_bytes: int) -> int:
    """Cache budget -> expert slots. int: slots; float in (0, 1]: fraction of all experts;
    str: '10%', '0.1', '512' (slots) or bytes with a unit ('2GiB', '1.5e9B')."""
    if isinstance(budget, str):
        s = budget.strip().lower()
        if s.endswith("%"):
            frac = float(s[:-1]) / 100.0
            return parse_budget(frac, n_experts_total, expert_bytes) if frac > 0 else _bad(budget)
        m = re.fullmatch(r"([0-9.e+]+)\s*(b|kb|mb|gb|kib|mib|gib)", s)
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2)] // expert_bytes)
        try:
            value = float(s)
        except ValueError:
            _bad(budget)
        return parse_budget(
            int(value) if value.is_integer() and value > 1 else value, n_experts_total, expert_bytes
        )
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        if budget < 0:
            _bad(budget)
        return int(budget)
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {budget}")
        return round(budget * n_experts_total)
    return _bad(budget)


def _bad(budget) -> int:
    raise ValueError(
        f"budget {budget!r} not understood: expected slots (int), a fraction (0, 1], "
        "a percentage ('10%') or bytes ('2GiB')"
    )


def expert_shape(trace: RouteTrace, model: str | None = None) -> tuple[int, int]:
    """(hidden, intermediate) of the trace's model from hybrid_moe.presets (name match)."""
    from hybrid_moe.presets import PRESETS

    name = (model or trace.model or "").lower()
    if model and model in PRESETS:
        p = PRESETS[model]
        return p.hidden, p.intermediate
    stem = Path(name).name.replace("_", "-")
    matches = [k for k in PRESETS if k.lower() in stem]
    if matches:
        p = PRESETS[max(matches, key=len)]
        if (p.n_layer, p.n_expert) == (trace.n_layer, trace.n_expert):
            return p.hidden, p.intermediate
    raise ValueError(
        f"cannot tell the expert shape of model {name!r}: pass model= one of "
        f"{sorted(PRESETS)} or hidden= and intermediate="
    )


def simulate(
    trace: RouteTrace,
    profile: str | Path | dict,
    policy: str,
    budget: int | float | str,
    fmt: str = "bf16",
    predictor_accuracy: float = DEFAULT_PREDICTOR_ACCURACY,
    seed: int = 0,
    *,
    model: str | None = None,
    hidden: int | None = None,
    intermediate: int | None = None,
    value_params: dict[str, float] | None = None,
    static_profile: np.ndarray | None = None,
    warm_start: bool = False,
) -> dict[str, Any]:
    """Replay `trace` under `policy` with a cache of `budget` (see parse_budget) on `profile`.

    Returns a dict: tokens_per_s (decode), latency_{mean,p50,p99}_us and step_latency_us per decode
    step, hit_rate ((hits + in-flight) / distinct selections, decode), copy_bytes_per_token,
    {cpu,gpu,copy}_busy fractions of total time, per-layer stats in `layers`, counts of copies by
    kind, plus the inputs (policy, budget_slots, budget_fraction, profile, fmt).
    predictor_accuracy: chance each next-layer prefetch hint is right (used by `value`).
    static_profile: float [n_layer, n_expert] use counts that `static` places by (see
    profile_from_heat, profile_from_trace); None: counted from `trace` itself (optimistic).
    warm_start: with a static_profile, every caching policy (lru, lfu, lru-fetch, value) starts
    from static's placement and adapts from there, instead of from an empty cache.
    """
    if not isinstance(trace, RouteTrace):
        raise ValueError(
            f"trace must be a hybrid_moe.trace_model.RouteTrace, got {type(trace).__name__}"
        )
    if policy not in policy_names():
        raise ValueError(f"unknown policy {policy!r}: expected one of {policy_names()}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}: expected one of {FORMATS}")
    if not 0 <= predictor_accuracy <= 1:
        raise ValueError(f"predictor_accuracy must be in [0, 1], got {predictor_accuracy}")
    prof = load_profile(profile)
    if hidden is None or intermediate is None:
        hidden, intermediate = expert_shape(trace, model)
    from hybrid_moe._native import native

    total = trace.n_layer * trace.n_expert
    n_weights = 3 * hidden * intermediate
    ebytes = n_weights * 2 if fmt == "bf16" else n_weights // 32 * 34  # Q8_0: 34 bytes per 32
    slots = parse_budget(budget, total, ebytes)
    if policy != "cpu" and slots < trace.top_k:
        raise ValueError(
            f"budget {budget!r} gives {slots} expert slots, fewer than top_k = "
            f"{trace.top_k}: the cache must hold at least one layer's experts"
        )
    slots = min(slots, total)
    if static_profile is None:
        prof_arr = np.zeros(0, dtype=np.float64)
    else:
        prof_arr = np.ascontiguousarray(static_profile, dtype=np.float64)
        if prof_arr.shape != (trace.n_layer, trace.n_expert):
            raise ValueError(
                f"static_profile must have shape (n_layer, n_expert) = "
                f"{(trace.n_layer, trace.n_expert)}, got {prof_arr.shape}"
            )
        if not np.all(np.isfinite(prof_arr)) or (prof_arr < 0).any():
            raise ValueError("static_profile must hold finite counts >= 0")
        prof_arr = prof_arr.reshape(-1)
    computed = getattr(trace, "computed", None)
    computed = (
        np.ascontiguousarray(computed, dtype=np.uint8)
        if computed is not None
        else np.zeros(0, dtype=np.uint8)
    )
    r = native.simulate(
        trace.ids,
        trace.weights,
        trace.step_offsets,
        trace.phase,
        computed,
        trace.n_layer,
        trace.n_expert,
        trace.top_k,
        to_native(prof),
        fmt,
        int(hidden),
        int(intermediate),
        policy,
        int(slots),
        float(predictor_accuracy),
        int(seed),
        check_value_params(value_params),
        prof_arr,
        bool(warm_start),
    )
    r.update(
        budget_slots=int(slots),
        budget_fraction=slots / total,
        profile=prof["name"],
        fmt=fmt,
        expert_bytes=ebytes,
        predictor_accuracy=predictor_accuracy,
    )
    return r


def profile_from_trace(trace: RouteTrace, decode_only: bool = True) -> np.ndarray:
    """float64 [n_layer, n_expert]: how often each (layer, expert) is selected in `trace` (its
    decode steps only by default; rows the source did not compute are skipped). A static profile
    taken from OTHER tokens than the ones scored (e.g. a continuation of a synthetic run)."""
    ids = np.asarray(trace.ids)
    keep = np.ones(ids.shape[:2], dtype=bool)
    computed = getattr(trace, "computed", None)
    if computed is not None and np.size(computed):
        keep &= np.asarray(computed, dtype=bool)
    if decode_only:
        per_step = np.diff(np.asarray(trace.step_offsets))
        token_phase = np.repeat(np.asarray(trace.phase), per_step)
        keep &= (token_phase == 1)[:, None]
    out = np.zeros((trace.n_layer, trace.n_expert), dtype=np.float64)
    layer = np.broadcast_to(np.arange(trace.n_layer)[None, :, None], ids.shape)
    sel = np.broadcast_to(keep[:, :, None], ids.shape)
    np.add.at(out, (layer[sel], ids[sel]), 1.0)
    return out


def profile_from_heat(path: str | Path) -> np.ndarray:
    """float64 [n_layer, n_expert]: the per-layer `heat` counts of a co-activation profile JSON
    (e.g. ../shared/traces/qwen3-30b-a3b.coactivation.json: 200 other prompts of the model), the
    frequency profile KTransformers-style static placement takes from prompts other than the run."""
    import json

    data = json.loads(Path(path).read_text())
    try:
        rows = [layer["heat"] for layer in data["layers"]]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: expected a JSON object with layers[].heat, missing {e}"
        ) from None
    out = np.asarray(rows, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{path}: every layer's heat must have the same length, got ragged rows")
    return out
