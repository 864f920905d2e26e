"""Runtime.reconfigure (policy / budget switch keeping the host store) and the decode timeline.

Outputs after each reconfigure are checked against ReferenceExperts (float32 torch) with the
tolerance of tests/test_runtime.py (3e-2 of max |ref|); the timeline parser is checked on a
hand-made event list and, on the GPU, on real steps (one visit per layer and step, ordered phases).
"""

from __future__ import annotations

import pytest
import torch

from hybrid_moe import HybridMoELayer, Runtime
from hybrid_moe.reference import ReferenceExperts
from hybrid_moe.timeline import Timeline
from test_runtime import _err, _route, _weights

E, H, I, K, L = 8, 64, 64, 2, 2
TOL = 3e-2


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        request.getfixturevalue("cuda_device")
    return torch.device(request.param)


def _model(device, policy="lru", budget="50%"):
    rt = Runtime(budget=budget, policy=policy, device=device, threads=2, n_layers=L)
    ws = [_weights("bf16", seed) for seed in range(L)]
    layers = [HybridMoELayer(rt, i, ws[i], top_k=K) for i in range(L)]
    return rt, layers, [ReferenceExperts(w).to(device) for w in ws]


def _steps(rt, layers, refs, device, g, n=4, T=1):
    for _ in range(n):
        x = torch.randn(T, H, generator=g).to(device)
        for layer, ref in zip(layers, refs, strict=True):
            ids, w = _route(T, g)
            ids, w = ids.to(device), w.to(device)
            assert _err(layer(x, ids, w), ref(x, ids, w)) <= TOL
    rt.synchronize()


def test_reconfigure_switches_policy_and_budget(device):
    rt, layers, refs = _model(device)
    g = torch.Generator().manual_seed(1)
    _steps(rt, layers, refs, device, g)
    gpu = device.type == "cuda"
    slots_before = rt.n_slots
    assert rt.stats()["forwards"] == 4 * L
    for policy, budget in [("static", "100%"), ("value", "25%"), ("cpu", 0), ("lru-fetch", 6)]:
        rt.reconfigure(policy=policy, budget=budget)
        assert rt.policy == policy and rt.budget == budget
        assert rt.native.policy == policy
        assert rt.stats()["forwards"] == 0  # stats start over
        _steps(rt, layers, refs, device, g)
        st = rt.stats()
        assert st["forwards"] == 4 * L and st["cpu_pairs"] + st["gpu_pairs"] == st["pairs"]
        want_slots = {"100%": E * L, "25%": 4, 0: 0, 6: 6}[budget] if gpu else 0
        assert rt.n_slots == want_slots
        if gpu and policy == "static":
            assert st["gpu_pairs"] == st["pairs"]  # every expert placed on the GPU
        if policy == "cpu":
            assert st["gpu_pairs"] == 0
    assert not gpu or slots_before == E * L // 2


def test_reconfigure_rejects_bad_options_and_keeps_working(device):
    rt, layers, refs = _model(device, policy="value", budget="50%")
    g = torch.Generator().manual_seed(2)
    _steps(rt, layers, refs, device, g, n=2)
    with pytest.raises(ValueError, match="unknown policy"):
        rt.reconfigure(policy="mru")
    with pytest.raises(ValueError, match="oracle"):
        rt.reconfigure(policy="oracle")
    with pytest.raises(ValueError, match="budget"):
        rt.reconfigure(budget="150%")
    if device.type == "cuda":
        with pytest.raises(ValueError, match="cannot hold one layer's top_k"):
            rt.reconfigure(budget=1)  # 1 slot < top_k
    with pytest.raises(ValueError, match="frequency"):
        rt.reconfigure(policy="static", frequency=torch.ones(L + 1, E))
    assert rt.policy == "value" and rt.budget == "50%"
    _steps(rt, layers, refs, device, g, n=2)  # still correct with the old configuration


def test_value_params_are_validated_and_reconfigurable(device):
    with pytest.raises(ValueError, match="unknown value-policy parameter 'halflife'"):
        Runtime(policy="value", device="cpu", value_params={"halflife": 4})
    with pytest.raises(ValueError, match="halflife_steps must be > 0"):
        Runtime(policy="value", device="cpu", value_params={"halflife_steps": -1})
    rt, layers, refs = _model(device, policy="value", budget="50%")
    g = torch.Generator().manual_seed(6)
    rt.reconfigure(value_params={"stall_weight": 1.0, "halflife_steps": 4})
    assert rt.value_params == {"stall_weight": 1.0, "halflife_steps": 4.0}
    _steps(rt, layers, refs, device, g, n=2)  # still the reference's output
    with pytest.raises(ValueError, match="stall_aware"):
        rt.reconfigure(value_params={"stall_aware": "no"})
    assert rt.value_params == {"stall_weight": 1.0, "halflife_steps": 4.0}  # kept
    rt.reconfigure(policy="lru")
    assert rt.value_params == {"stall_weight": 1.0, "halflife_steps": 4.0}  # None keeps them
    rt.reconfigure(policy="value", value_params={})
    assert rt.value_params == {}
    _steps(rt, layers, refs, device, g, n=1)


def test_reconfigure_before_start_only_changes_options():
    rt, layers, refs = _model("cpu", policy="lru")
    rt.reconfigure(policy="cpu", budget=0)
    assert not rt.started
    _steps(rt, layers, refs, torch.device("cpu"), torch.Generator().manual_seed(3), n=1)
    assert rt.native.policy == "cpu"


def test_frequency_from_a_heat_profile_file(tmp_path):
    import json

    heat = torch.randint(1, 50, (L, E), generator=torch.Generator().manual_seed(4))
    f = tmp_path / "heat.json"
    f.write_text(json.dumps({"layers": [{"heat": h.tolist()} for h in heat]}))
    rt, layers, refs = _model("cpu", policy="static")
    assert rt._frequency_list(str(f)) == rt._frequency_list(heat)  # the path reads the same counts
    rt.reconfigure(policy="static", frequency=f)
    _steps(rt, layers, refs, torch.device("cpu"), torch.Generator().manual_seed(5), n=1)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"layers": [{"heat": [1] * E}] * (L + 1)}))
    with pytest.raises(ValueError, match="frequency"):
        rt.reconfigure(policy="static", frequency=wrong)
    with pytest.raises(ValueError, match="no co-activation profile"):
        rt.reconfigure(policy="static", frequency=tmp_path / "missing.json")


def test_timeline_parser_on_handmade_events():
    # Two layers, one step, then layer 0 again; times in us. Kinds as in csrc/runtime/timeline.h.
    ev = [
        (0.0, 0, 0, 1, 0),
        (5.0, 0, 1, 0, 0),  # enqueue layer 0
        (10.0, 0, 2, 1, 0),
        (11.0, 0, 8, 0, 0),  # plan parts: inputs converted, scheduled
        (13.5, 0, 9, 0, 0),
        (14.0, 0, 3, 2, 3),  # plan: 2 CPU experts, 3 GPU
        (40.0, 0, 4, 0, 0),
        (70.0, 0, 5, 1, 0),
        (72.0, 0, 6, 0, 0),
        (30.0, -1, 7, 5, 0),  # a copy landed
        (90.0, 1, 2, 1, 0),
        (92.0, 1, 3, 0, 5),
        (120.0, 1, 4, 0, 0),
        (121.0, 1, 6, 0, 0),
        (150.0, 0, 2, 1, 0),
        (151.0, 0, 3, 0, 1),
        (170.0, 0, 4, 0, 0),
        (171.0, 0, 6, 0, 0),
    ]
    tl = Timeline(ev)
    assert [v.layer for v in tl.visits] == [0, 1, 0]
    v0, v1, v2 = tl.visits
    assert v0.phases == {
        "plan": 4.0,
        "plan_convert": 1.0,
        "plan_schedule": 2.5,
        "plan_submit": 0.5,
        "gpu": 26.0,
        "cpu_wait": 30.0,
        "release": 2.0,
        "period": 80.0,
        "lead": 5.0,
    }
    assert v0.cpu_experts == 2 and v0.gpu_experts == 3 and v0.cpu_waited
    assert v1.phases["gap"] == 18.0 and v1.phases["cpu_wait"] == 0.0 and "lead" not in v1.phases
    assert v2.phases["gap"] == 29.0 and "period" not in v2.phases
    s = tl.summary()
    assert s["visits"] == 3 and s["copies"] == 1
    assert s["share_with_cpu"] == pytest.approx(1 / 3)
    assert s["gap_mean_us"] == pytest.approx(23.5) and s["plan_p50_us"] == 2.0
    assert s["plan_schedule_mean_us"] == 2.5  # only the visit that recorded the parts
    assert "convert/schedule/submit 1.0/2.5/0.5" in tl.describe()


def test_timeline_records_gpu_decode_steps(cuda_device):
    rt, layers, refs = _model(torch.device("cuda"), policy="lru", budget="50%")
    g = torch.Generator().manual_seed(4)
    _steps(rt, layers, refs, torch.device("cuda"), g, n=1)  # start
    rt.enable_timeline(10_000)
    _steps(rt, layers, refs, torch.device("cuda"), g, n=5)
    tl = rt.timeline()
    assert len(tl.visits) == 5 * L and tl.dropped == 0
    for v in tl.visits:
        t = v.t
        assert t["enqueue_begin"] <= t["enqueue_end"]
        assert t["plan_begin"] <= t["plan_end"] <= t["join_begin"] <= t["join_end"]
        assert t["plan_begin"] <= t["plan_inputs"] <= t["plan_scheduled"] <= t["plan_end"]
        assert v.cpu_experts + v.gpu_experts >= 1
    rt.enable_timeline(0)
    _steps(rt, layers, refs, torch.device("cuda"), g, n=1)
    assert len(rt.timeline().visits) == 0


@pytest.mark.parametrize(
    "mode,dtype",
    [
        ("fused", torch.bfloat16),
        ("fused", torch.float32),
        ("doorbell", torch.float32),
        ("hostfn", torch.bfloat16),
    ],
)
def test_decode_sync_modes_eager_and_graph_match_reference(cuda_device, monkeypatch, mode, dtype):
    """Every decode hand-off (planner + fused stage/finish kernels; planner + stream memory
    operations and copies; host functions) gives the reference output in bf16 and fp32, eagerly
    and replayed from a captured CUDA graph with fresh inputs."""
    monkeypatch.delenv("HM_DECODE_SYNC", raising=False)
    monkeypatch.delenv("HM_DECODE_FUSED", raising=False)
    if mode == "hostfn":
        monkeypatch.setenv("HM_DECODE_SYNC", "hostfn")
    elif mode == "doorbell":
        monkeypatch.setenv("HM_DECODE_FUSED", "0")
    dev = torch.device("cuda")
    rt, layers, refs = _model(dev, policy="lru", budget="50%")
    g = torch.Generator().manual_seed(5)
    _steps(rt, layers, refs, dev, g, n=3, T=2)
    sync = rt.stats()["decode_sync"]
    want_sync = {
        "fused": "doorbell, fused hand-off",
        "doorbell": "doorbell",
        "hostfn": "host functions",
    }[mode]
    assert sync.startswith(want_sync) and (mode == "fused") == ("fused" in sync), sync
    x = torch.randn(2, H, generator=g).to(dev, dtype)
    routes = [tuple(t.to(dev) for t in _route(2, g)) for _ in layers]

    def step():
        y = x
        for layer, (ids, w) in zip(layers, routes, strict=True):
            y = layer(y, ids, w)
        return y

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = step()
    for _ in range(6):
        x.copy_(torch.randn(2, H, generator=g).to(dev))
        for ids, w in routes:
            new_ids, new_w = _route(2, g)
            ids.copy_(new_ids.to(dev))
            w.copy_(new_w.to(dev))
        graph.replay()
        want = x
        for ref, (ids, w) in zip(refs, routes, strict=True):
            want = ref(want, ids, w).to(dtype)
        torch.cuda.synchronize()
        assert out.dtype == dtype
        assert _err(out, want) <= (4 if dtype == torch.bfloat16 else 2) * TOL
    rt.synchronize()
    st = rt.stats()
    assert st["gpu_pairs"] > 0 and st["cpu_pairs"] + st["gpu_pairs"] == st["pairs"]
