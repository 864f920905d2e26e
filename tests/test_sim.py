"""hybrid_moe.sim / cost_model / policies and `hybrid-moe sim`: results, conservation, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid_moe.cost_model import cost_model, list_profiles, load_profile
from hybrid_moe.policies import parse_policies, policy_names
from hybrid_moe.sim import parse_budget, simulate
from hybrid_moe.trace_model import DECODE, PREFILL, RouteTrace


def make_trace(n_layer=4, n_expert=16, top_k=4, decode=150, prefill=12, seed=0) -> RouteTrace:
    rng = np.random.default_rng(seed)
    n = prefill + decode
    ids = np.empty((n, n_layer, top_k), dtype=np.int32)
    for t in range(n):
        for layer in range(n_layer):
            hot = rng.random() < 0.6
            pool = np.arange(5) if hot else np.arange(n_expert)
            ids[t, layer] = rng.choice(
                pool if len(pool) >= top_k else np.arange(n_expert), size=top_k, replace=False
            )
    w = rng.random((n, n_layer, top_k)).astype(np.float32) + 0.1
    w /= w.sum(-1, keepdims=True)
    offsets = np.concatenate([[0, prefill], prefill + np.arange(1, decode + 1)])
    phase = np.array([PREFILL] + [DECODE] * decode, dtype=np.int8)
    return RouteTrace(n_layer, n_expert, top_k, ids, w, offsets, phase, model="test")


SHAPE = dict(hidden=2048, intermediate=768)


def test_profiles_load_by_name_and_path(tmp_path):
    assert {"consumer-4090", "h200-lent"} <= set(list_profiles())
    p = load_profile("consumer-4090")
    assert p["copy"]["h2d_gbps"] == 25.0 and "notes" in p
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(dict(p, name="mine")))
    assert load_profile(str(f))["name"] == "mine"
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_profile("nope")
    bad = json.loads(json.dumps(p))
    del bad["copy"]["h2d_gbps"]
    with pytest.raises(ValueError, match=r"copy\.h2d_gbps"):
        load_profile(bad)


def test_cost_model_formula_and_refine():
    p = load_profile("h200-lent")
    c = cost_model(p, "bf16", 2048, 768)
    b = 3 * 2048 * 768 * 2
    assert c.expert_bytes == b
    # t = latency + bytes / bandwidth (us, bytes / (GB/s * 1e3)); the CPU's rate is its DRAM rate
    # times the format's kernel efficiency.
    assert c.t_copy() == pytest.approx(p["copy"]["latency_us"] + b / (p["copy"]["h2d_gbps"] * 1e3))
    cpu_rate = p["cpu"]["dram_read_gbps"] * 1e3 * p["formats"]["bf16"]["cpu_efficiency"]
    t_cpu1 = p["cpu"]["expert_overhead_us"] + b / cpu_rate
    assert c.t_cpu(1) == pytest.approx(t_cpu1)
    for _ in range(100):
        c.refine("cpu", 1, 2 * t_cpu1, 0.2)
    assert c.scale("cpu") == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="unknown resource"):
        c.refine("disk", 1, 1.0)
    with pytest.raises(ValueError, match="weight format"):
        cost_model("h200-lent", "fp4", 2048, 768)


def test_budget_parsing():
    assert parse_budget("10%", 1000, 100) == 100
    assert parse_budget(0.25, 1000, 100) == 250
    assert parse_budget(37, 1000, 100) == 37
    assert parse_budget("1KiB", 1000, 100) == 10
    with pytest.raises(ValueError, match="budget"):
        parse_budget("lots", 1000, 100)


def test_simulate_all_policies_conserve_counts():
    tr = make_trace()
    results = {p: simulate(tr, "consumer-4090", p, "40%", **SHAPE) for p in policy_names()}
    for r in results.values():
        assert r["decode_tokens"] == 150 and r["prefill_tokens"] == 12
        assert r["selections"] == 150 * 4 * 4
        assert r["cpu_experts"] + r["gpu_experts"] == r["selections"]
        copies = r["demand_copies"] + r["prefetch_copies"] + r["admit_copies"]
        assert r["copy_bytes"] == pytest.approx(copies * r["expert_bytes"])
        assert len(r["step_latency_us"]) == 150
        assert np.sum(r["step_latency_us"]) == pytest.approx(r["decode_time_us"])
        assert sum(layer["selections"] for layer in r["layers"]) == r["selections"]
        assert 0 <= r["hit_rate"] <= 1 and r["tokens_per_s"] > 0
    assert results["cpu"]["hit_rate"] == 0 and results["cpu"]["copy_bytes"] == 0
    # Any cache beats no cache on this skewed trace.
    assert (
        min(results[p]["tokens_per_s"] for p in ("static", "lru", "value"))
        > results["cpu"]["tokens_per_s"]
    )


def test_simulate_bad_inputs():
    tr = make_trace(decode=5)
    with pytest.raises(ValueError, match="fewer than top_k"):
        simulate(tr, "consumer-4090", "lru", 2, **SHAPE)
    with pytest.raises(ValueError, match="unknown policy 'mru'"):
        simulate(tr, "consumer-4090", "mru", "10%", **SHAPE)
    with pytest.raises(ValueError, match="unknown profile"):
        simulate(tr, "laptop", "lru", "50%", **SHAPE)
    with pytest.raises(ValueError, match="predictor_accuracy"):
        simulate(tr, "consumer-4090", "value", "50%", predictor_accuracy=2.0, **SHAPE)
    with pytest.raises(ValueError, match="expert shape"):
        simulate(tr, "consumer-4090", "lru", "50%")
    with pytest.raises(ValueError, match="unknown policy"):
        parse_policies("lru,belady")
    assert parse_policies("all") == policy_names()


def test_value_params_change_the_value_policy_and_are_validated():
    tr = make_trace(decode=80)
    base = simulate(tr, "h200-lent", "value", "30%", **SHAPE)
    same = simulate(tr, "h200-lent", "value", "30%", value_params={}, **SHAPE)
    np.testing.assert_array_equal(same["step_latency_us"], base["step_latency_us"])  # defaults
    # No stall charge and a long memory admit more: more copies than the defaults make.
    eager = simulate(tr, "h200-lent", "value", "30%", value_params={"stall_aware": False}, **SHAPE)
    assert eager["admit_copies"] + eager["prefetch_copies"] > (
        base["admit_copies"] + base["prefetch_copies"]
    )
    lru = simulate(tr, "h200-lent", "lru", "30%", value_params={"stall_weight": 0.5}, **SHAPE)
    lru0 = simulate(tr, "h200-lent", "lru", "30%", **SHAPE)
    np.testing.assert_array_equal(lru["step_latency_us"], lru0["step_latency_us"])  # value only
    for bad, msg in [
        ({"stall_wieght": 1}, "unknown value-policy parameter 'stall_wieght'"),
        ({"halflife_steps": 0}, "halflife_steps must be > 0"),
        ({"stall_weight": -1}, "stall_weight must be >= 0"),
        ({"weight_mix": 2}, "weight_mix must be in"),
        ({"stall_weight": "1"}, "must be a finite number"),
        ({"horizon_steps": float("nan")}, "must be a finite number"),
        ({"stall_aware": 1}, "must be a bool"),
        ([("stall_weight", 1)], "must be a dict"),
    ]:
        with pytest.raises(ValueError, match=msg):
            simulate(tr, "h200-lent", "value", "30%", value_params=bad, **SHAPE)


def test_parse_value_params_cli_form():
    from hybrid_moe.policies import parse_value_params

    assert parse_value_params(["stall_weight=1", "stall_aware=false"]) == {
        "stall_weight": 1.0,
        "stall_aware": False,
    }
    assert parse_value_params(None) == {}
    for bad, msg in [
        (["stall_weight"], "KEY=VALUE"),
        (["=1"], "KEY=VALUE"),
        (["stall_weight=fast"], "expects a number"),
        (["stall_aware=maybe"], "true or false"),
        (["nope=1"], "unknown value-policy parameter"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_value_params(bad)


def test_dev_trace_value_beats_lru(traces_dir):
    from hybrid_moe.traces import load_trace

    tr = load_trace(traces_dir / "qwen3-30b-a3b.top6.route.csv")
    r = {
        p: simulate(tr, "consumer-4090", p, "10%", model="qwen3-30b-a3b")
        for p in ("lru", "value", "oracle")
    }
    assert r["oracle"]["hit_rate"] >= r["lru"]["hit_rate"]
    assert r["value"]["tokens_per_s"] > r["lru"]["tokens_per_s"]


def test_sim_command_writes_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from hybrid_moe.cli import main

    out, png = tmp_path / "r.json", tmp_path / "s.png"
    rc = main(
        [
            "sim",
            "--synthetic",
            "qwen3-30b-a3b",
            "--tokens",
            "40",
            "--budget",
            "10%,25%",
            "--policy",
            "cpu,lru,value",
            "--out",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert {r["policy"] for r in data["results"]} == {"cpu", "lru", "value"}
    assert len(data["results"]) == 6 and png.stat().st_size > 1000
    assert main(["sim", "--synthetic", "qwen3-30b-a3b", "--tokens", "5", "--policy", "nope"]) == 2


def test_sim_command_static_profile_and_warm_start(tmp_path, capsys):
    from hybrid_moe.cli import main

    heat = np.random.default_rng(3).integers(1, 100, size=(48, 128))
    f = tmp_path / "heat.json"
    f.write_text(json.dumps({"layers": [{"heat": h.tolist()} for h in heat]}))
    out = tmp_path / "r.json"
    base = ["sim", "--synthetic", "qwen3-30b-a3b", "--tokens", "30", "--budget", "25%"]
    args = [*base, "--policy", "static,value", "--out", str(out)]
    assert main([*args, "--static-profile", str(f), "--warm-start"]) == 0
    data = json.loads(out.read_text())
    assert "heat.json" in data["placement"] and "start from it" in data["placement"]
    warm = {r["policy"]: r for r in data["results"]}
    assert main(args) == 0  # default: static from the trace's own counts, cold caching policies
    data = json.loads(out.read_text())
    assert "own counts" in data["placement"]
    own = {r["policy"]: r for r in data["results"]}
    # A random heat places static worse than the trace's own counts.
    assert warm["static"]["hit_rate"] < own["static"]["hit_rate"]
    assert main([*base, "--warm-start"]) == 2  # needs a profile to start from
    assert "--warm-start needs --static-profile" in capsys.readouterr().err


def test_static_profile_from_other_tokens():
    from hybrid_moe.sim import profile_from_trace

    tr = make_trace(seed=3)
    own = profile_from_trace(tr, decode_only=False)
    # Counts against a plain loop over every selection.
    want = np.zeros((tr.n_layer, tr.n_expert))
    for t in range(tr.ids.shape[0]):
        for layer in range(tr.n_layer):
            for e in tr.ids[t, layer]:
                want[layer, e] += 1
    np.testing.assert_array_equal(own, want)
    assert profile_from_trace(tr).sum() == 150 * tr.n_layer * tr.top_k  # decode steps only
    # Passing the trace's own profile reproduces the default static exactly.
    a = simulate(tr, "consumer-4090", "static", "25%", **SHAPE)
    b = simulate(tr, "consumer-4090", "static", "25%", static_profile=own, **SHAPE)
    assert a["tokens_per_s"] == b["tokens_per_s"] and a["hit_rate"] == b["hit_rate"]
    # A profile that ranks the least used experts first places worse.
    flipped = own.max() - own
    c = simulate(tr, "consumer-4090", "static", "25%", static_profile=flipped, **SHAPE)
    assert c["hit_rate"] < a["hit_rate"]
    with pytest.raises(ValueError, match="static_profile must have shape"):
        simulate(tr, "consumer-4090", "static", "25%", static_profile=own[:, :3], **SHAPE)
    with pytest.raises(ValueError, match="static_profile must hold"):
        simulate(tr, "consumer-4090", "static", "25%", static_profile=-own, **SHAPE)


def test_profile_from_heat(tmp_path):
    from hybrid_moe.sim import profile_from_heat

    rng = np.random.default_rng(1)
    heat = rng.integers(1, 100, size=(4, 16))
    f = tmp_path / "heat.json"
    rows = [{"layer": i, "heat": h.tolist()} for i, h in enumerate(heat)]
    f.write_text(json.dumps({"layers": rows}))
    np.testing.assert_array_equal(profile_from_heat(f), heat)
    f.write_text(json.dumps({"layers": [{"layer": 0}]}))
    with pytest.raises(ValueError, match=r"layers\[\]\.heat"):
        profile_from_heat(f)


def test_dev_heat_profile_shape(traces_dir):
    from hybrid_moe.sim import profile_from_heat

    p = profile_from_heat(traces_dir / "qwen3-30b-a3b.coactivation.json")
    assert p.shape == (48, 128) and p.sum() > 0 and (p >= 0).all()
