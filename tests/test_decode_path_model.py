"""The live-decode-path terms of the cost model (profile section "decode"), warm starts, and the
decode semantics the simulator shares with the runtime (PlanInput::decode), checked through
hybrid_moe.sim on small random traces against closed-form expectations."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hybrid_moe.cost_model import cost_model, load_profile, to_native
from hybrid_moe.sim import simulate
from hybrid_moe.trace_model import DECODE, RouteTrace
from test_sim import SHAPE, make_trace


def _profile(gpu_layer_us=0.0, stall=0.0, base="consumer-4090"):
    p = copy.deepcopy(load_profile(base))
    p["decode"] = {"decode_gpu_layer_us": gpu_layer_us, "copy_stall_fraction": stall}
    return p


def _decode_only(full: RouteTrace) -> RouteTrace:
    """make_trace's decode steps alone (it starts with a 12-token prefill step)."""
    n = full.ids.shape[0] - 12
    return RouteTrace(
        full.n_layer,
        full.n_expert,
        full.top_k,
        full.ids[12:],
        full.weights[12:],
        np.arange(n + 1),
        np.full(n, DECODE, dtype=np.int8),
        model="test",
    )


def _decode_time(r) -> float:
    return float(np.sum(r["step_latency_us"]))


def test_decode_section_is_optional_and_validated():
    p = copy.deepcopy(load_profile("consumer-4090"))
    p.pop("decode", None)
    flat = to_native(p)
    assert flat["decode_gpu_layer_us"] == 0.0 and flat["copy_stall_fraction"] == 0.0
    for bad in (
        {"copy_stall_fraction": -0.1},
        {"copy_stall_fraction": 2.5},
        {"decode_gpu_layer_us": -1},
    ):
        q = copy.deepcopy(p)
        q["decode"] = bad
        with pytest.raises(ValueError, match="decode"):
            to_native(q)
    assert to_native(load_profile("h200-lent"))["copy_stall_fraction"] > 0  # measured, shipped


def test_gpu_layer_term_adds_exactly_per_layer_with_gpu_experts():
    """static never copies, so its plans do not depend on time: the term adds exactly
    decode_gpu_layer_us per decode layer visit that ran any expert on the GPU."""
    tr = make_trace()
    a = simulate(tr, _profile(0.0), "static", 0.5, **SHAPE)
    b = simulate(tr, _profile(40.0), "static", 0.5, **SHAPE)
    assert a["copy_bytes"] == b["copy_bytes"] == 0 and a["gpu_experts"] == b["gpu_experts"] > 0
    # every decode layer visit with a GPU expert pays 40 us: at most one per (step, layer)
    extra = _decode_time(b) - _decode_time(a)
    visits = tr.n_layer * len(b["step_latency_us"])
    assert 0 < extra <= 40.0 * visits + 1e-6
    assert extra == pytest.approx(40.0 * round(extra / 40.0), abs=1e-6)
    c = simulate(tr, _profile(40.0), "cpu", 0, **SHAPE)  # no GPU expert: no term
    assert _decode_time(c) == pytest.approx(
        _decode_time(simulate(tr, _profile(0.0), "cpu", 0, **SHAPE))
    )


def test_copy_stall_slows_copying_policies_only():
    tr = make_trace()
    for pol in ("lru", "lru-fetch"):
        a = simulate(tr, _profile(stall=0.0), pol, 0.3, **SHAPE)
        b = simulate(tr, _profile(stall=0.5), pol, 0.3, **SHAPE)
        assert b["copy_bytes"] > 0
        assert _decode_time(b) > _decode_time(a) * 1.01, pol
    s0 = simulate(tr, _profile(stall=0.0), "static", 0.3, **SHAPE)
    s1 = simulate(tr, _profile(stall=0.5), "static", 0.3, **SHAPE)
    assert _decode_time(s0) == pytest.approx(_decode_time(s1))


def test_value_admission_charges_the_stall():
    """With a stall, value copies fewer experts than the same policy told to ignore it."""
    tr = make_trace(decode=300)
    prof = _profile(stall=1.0)
    aware = simulate(tr, prof, "value", 0.3, **SHAPE)
    blind = simulate(tr, prof, "value", 0.3, value_params={"stall_aware": False}, **SHAPE)
    assert aware["copy_bytes"] < blind["copy_bytes"]
    twice = simulate(tr, prof, "value", 0.3, value_params={"stall_weight": 2.0}, **SHAPE)
    once = simulate(tr, prof, "value", 0.3, value_params={"stall_weight": 1.0}, **SHAPE)
    assert twice["copy_bytes"] <= once["copy_bytes"] <= blind["copy_bytes"]
    with pytest.raises(ValueError, match="stall_weight"):
        simulate(tr, prof, "value", 0.3, value_params={"stall_weight": -1.0}, **SHAPE)
    cm = cost_model(prof, "bf16", **SHAPE)
    assert cm.t_copy() > 0


def test_decode_misses_run_on_the_cpu_like_the_runtime():
    """In decode, lru-fetch cannot compute a fetched miss on the GPU in the same step (the
    runtime's stream cannot wait for the copy): it behaves as 'admit every miss' = lru."""
    full = make_trace()
    tr = _decode_only(full)
    a = simulate(tr, _profile(), "lru-fetch", 0.3, **SHAPE)
    b = simulate(tr, _profile(), "lru", 0.3, **SHAPE)
    assert a["hit_rate"] == pytest.approx(b["hit_rate"])
    assert a["demand_copies"] == 0 and a["copy_bytes"] == pytest.approx(b["copy_bytes"])
    # with a prefill step, lru-fetch does fetch there (the runtime waits for prefill copies)
    assert simulate(full, _profile(), "lru-fetch", 0.3, **SHAPE)["demand_copies"] > 0


@pytest.mark.parametrize("policy", ["lru", "lfu", "lru-fetch", "value"])
def test_warm_start_starts_from_static_placement(policy):
    tr = _decode_only(make_trace(decode=40))
    prof = _profile()
    freq = np.zeros((tr.n_layer, tr.n_expert))
    for li in range(tr.n_layer):
        np.add.at(freq[li], tr.ids[:, li, :].reshape(-1), 1.0)
    cold = simulate(tr, prof, policy, 0.3, static_profile=freq, **SHAPE)
    warm = simulate(tr, prof, policy, 0.3, static_profile=freq, warm_start=True, **SHAPE)
    static = simulate(tr, prof, "static", 0.3, static_profile=freq, **SHAPE)
    assert warm["hit_rate"] > cold["hit_rate"]
    # the first decode step hits what static's placement holds
    assert warm["layers"][0]["hits"] >= 1 and static["hit_rate"] > 0
    with pytest.raises(ValueError, match="static_profile"):
        simulate(tr, prof, policy, 0.3, static_profile=freq[:1], warm_start=True, **SHAPE)
