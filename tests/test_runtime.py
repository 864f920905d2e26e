"""Runtime / HybridMoELayer against ReferenceExperts (float32 torch) on random weights.

Every policy x budgets 0%, 30%, 100% x bf16 and q8_0 x T = 1, 3, 64 (plus T = 100, the prefill
path, on the GPU), several steps each so the cache fills and hits happen. Tolerance: the CPU
kernel rounds activations to bf16 (bf16 weights) or quantizes them to Q8 (q8_0 weights) and the GPU
kernel reads bf16 activations, so max |out - ref| <= 3e-2 * max |ref| (q8_0's reference is the
dequantized weights). Stats conservation, bad inputs, and a long run with flat memory.
"""

from __future__ import annotations

import re

import pytest
import torch

import hybrid_moe
from child_python import run_python
from hybrid_moe import HybridMoELayer, Runtime
from hybrid_moe.loaders.tensors import ExpertWeights
from hybrid_moe.reference import ReferenceExperts

E, H, I, K, L = 8, 64, 64, 2, 2
POLICIES = ["cpu", "static", "lru", "lfu", "lru-fetch", "value"]
BUDGETS = ["0%", "30%", "100%"]
TOL = 3e-2


def _weights(fmt: str, seed: int) -> ExpertWeights:
    g = torch.Generator().manual_seed(seed)
    gate, up, down = (
        torch.randn(E, I, H, generator=g) * 0.2,
        torch.randn(E, I, H, generator=g) * 0.2,
        torch.randn(E, H, I, generator=g) * 0.2,
    )
    w = ExpertWeights.dense(gate, up, down)
    if fmt == "bf16":
        return w.to_bf16()
    from hybrid_moe.cpu_experts import quantize_q8_0

    q = [quantize_q8_0(t) for t in (gate, up, down)]
    return ExpertWeights("q8_0", *q)


def _route(T: int, g: torch.Generator, skew: bool = True):
    # Skewed choice (experts 0..3 most of the time) so caches get reuse.
    probs = torch.tensor([8, 6, 4, 3, 1, 1, 1, 1], dtype=torch.float32) if skew else torch.ones(E)
    ids = torch.stack(
        [torch.multinomial(probs, K, replacement=False, generator=g) for _ in range(T)]
    )
    w = torch.rand(T, K, generator=g) + 0.1
    return ids, w / w.sum(-1, keepdim=True)


def _devices():
    return ["cpu", "cuda"]


@pytest.fixture(params=_devices())
def device(request):
    if request.param == "cuda":
        request.getfixturevalue("cuda_device")
    return torch.device(request.param)


def _build(policy, budget, fmt, device, **kw):
    rt = Runtime(budget=budget, policy=policy, device=device, threads=2, n_layers=L, **kw)
    ws = [_weights(fmt, seed) for seed in range(L)]
    layers = [HybridMoELayer(rt, i, ws[i], top_k=K) for i in range(L)]
    refs = [ReferenceExperts(w).to(device) for w in ws]
    return rt, layers, refs


def _err(out, ref):
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.mark.parametrize("fmt", ["bf16", "q8_0"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("policy", POLICIES)
def test_layer_matches_reference(policy, budget, fmt, device):
    rt, layers, refs = _build(policy, budget, fmt, device)
    g = torch.Generator().manual_seed(7)
    sizes = [1, 3, 64] + ([100] if device.type == "cuda" else [])
    total_pairs = 0
    for T in sizes:
        for _step in range(4):
            x = torch.randn(T, H, generator=g).to(device)
            for layer, ref in zip(layers, refs, strict=True):
                ids, w = _route(T, g)
                ids, w = ids.to(device), w.to(device)
                out = layer(x, ids, w)
                want = ref(x, ids, w)
                assert out.shape == (T, H) and out.dtype == x.dtype and out.device == x.device
                assert _err(out, want) <= TOL, (T, _err(out, want))
                total_pairs += T * K
            if device.type == "cuda":
                rt.wait_copies()  # let admitted copies land so later steps hit
    rt.synchronize()
    s = rt.stats()
    assert s["pairs"] == total_pairs
    assert s["cpu_pairs"] + s["gpu_pairs"] == s["pairs"]
    assert s["cpu_experts"] + s["gpu_experts"] == s["experts"]
    assert s["hits"] + s["misses"] + s["in_flight"] == s["experts"]
    if device.type == "cpu" or budget == "0%" or policy == "cpu":
        assert s["gpu_pairs"] == 0 and s["n_slots"] == 0
    else:
        assert s["n_slots"] >= K
        if policy != "static":  # static's uniform default placement may miss everything
            assert s["gpu_pairs"] > 0 and s["hit_rate"] > 0, s
    # The comparison can fail: another layer's weights give a clearly different output.
    x = torch.randn(3, H, generator=g).to(device)
    ids, w = _route(3, g)
    ids, w = ids.to(device), w.to(device)
    assert _err(layers[0](x, ids, w), refs[1](x, ids, w)) > 10 * TOL


def test_bf16_hidden_and_int32_ids(device):
    _rt, layers, refs = _build("value", "100%", "bf16", device)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x = torch.randn(2, H, generator=g).to(device, torch.bfloat16)
        ids, w = _route(2, g)
        out = layers[1](x, ids.to(device, torch.int32), w.to(device))
        assert out.dtype == torch.bfloat16
        assert _err(out, refs[1](x.float(), ids.to(device), w.to(device))) <= 4e-2


def _hinted_steps(layers, refs, device, n: int, seed: int) -> None:
    """n one-token steps with layer 1's router given to layer 0 (next-layer hints): layer 0 routed
    at random, layer 1 routed by that router on the same input, so the hints name exactly layer
    1's experts (a perfect predictor). Both outputs checked against the reference."""
    router = torch.randn(E, H).to(device)
    layers[0].set_next_router(router)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(1, H, generator=g).to(device)
        ids0, w0 = (t.to(device) for t in _route(1, g))
        y = layers[0](x, ids0, w0)
        assert y.shape == x.shape and _err(y, refs[0](x, ids0, w0)) <= TOL
        w1, ids1 = torch.topk(torch.softmax(x.float() @ router.T, -1), K)
        assert _err(layers[1](x, ids1, w1), refs[1](x, ids1, w1)) <= TOL


def test_next_router_hints_prefetch(device):
    """With layer 1's router given to layer 0, hints are recorded and accuracy is measured."""
    rt, layers, refs = _build("value", "30%", "bf16", device)
    _hinted_steps(layers, refs, device, n=20, seed=5)
    rt.synchronize()
    assert rt.stats()["hint_accuracy"] > 0.9


@pytest.mark.parametrize(
    "helps,prewarm,policy",
    [("0", "0", "value"), ("1", "0", "value"), ("0", "1", "cpu"), ("1", "1", "value")],
)
def test_planner_settings_keep_results(cuda_device, monkeypatch, helps, prewarm, policy):
    """HYBRID_MOE_PLANNER_HELPS (the planner computes CPU items) and HYBRID_MOE_CPU_PREWARM (the
    next layer's hinted CPU experts prefetched between layers), each on and off, with next-layer
    hints so the prewarm has experts to warm: outputs match the reference; the setting shows in
    decode_sync; a bad value is a ValueError naming the variable."""
    monkeypatch.setenv("HYBRID_MOE_PLANNER_HELPS", helps)
    monkeypatch.setenv("HYBRID_MOE_CPU_PREWARM", prewarm)
    dev = torch.device("cuda")
    rt, layers, refs = _build(policy, "30%", "bf16", dev)
    _hinted_steps(layers, refs, dev, n=12, seed=9)
    rt.synchronize()
    sync = rt.stats()["decode_sync"]
    if sync.startswith("doorbell"):
        assert ("planner computes" in sync) == (helps == "1"), sync
    for var in ("HYBRID_MOE_PLANNER_HELPS", "HYBRID_MOE_CPU_PREWARM"):
        with monkeypatch.context() as m:
            m.setenv(var, "maybe")
            with pytest.raises(ValueError, match=var):
                _build(policy, "30%", "bf16", dev)[0].start()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_next_router_logit_hints_under_graph_replay(cuda_device, dtype):
    """Decode on a GPU hands layer 1's router logits (fp32 / bf16) to the planner, which takes
    their top k: under CUDA-graph replay a perfect router still scores ~1 (random hints: K / E),
    and the outputs match the reference."""
    rt, layers, refs = _build("value", "30%", "bf16", cuda_device)
    router = torch.randn(E, H, device=cuda_device).to(dtype)
    layers[0].set_next_router(lambda h: h @ router.T)  # logits [T, E] in `dtype`
    x = torch.zeros(1, H, device=cuda_device, dtype=dtype)
    ids0 = torch.zeros(1, K, dtype=torch.int32, device=cuda_device)
    w0 = torch.zeros(1, K, device=cuda_device)
    ids1, w1 = ids0.clone(), w0.clone()
    g = torch.Generator().manual_seed(11)

    def fresh_inputs():
        x.copy_(torch.randn(1, H, generator=g))
        i, w = _route(1, g)
        ids0.copy_(i)
        w0.copy_(w)
        # layer 1 follows layer 1's router on the same x: what the hints predict
        w_top, i_top = torch.topk(torch.softmax((x @ router.T).float(), -1), K)
        ids1.copy_(i_top)
        w1.copy_(w_top)

    def step():
        return layers[0](x, ids0, w0), layers[1](x, ids1, w1)

    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fresh_inputs()
                step()
        torch.cuda.current_stream().wait_stream(s)
        rt.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out0, out1 = step()
        rt.reset_stats()
        for _ in range(20):
            fresh_inputs()
            graph.replay()
            torch.cuda.synchronize()
            rt.check()
            assert _err(out0, refs[0](x.float(), ids0, w0)) <= TOL
            assert _err(out1, refs[1](x.float(), ids1, w1)) <= TOL
    rt.synchronize()
    assert rt.stats()["hint_accuracy"] > 0.9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_long_run_memory_flat(device):
    steps = 10_000 if device.type == "cuda" else 1_500
    rt, layers, _ = _build("value", "30%", "bf16", device)
    g = torch.Generator().manual_seed(11)
    xs = torch.randn(16, 1, H, generator=g).to(device)
    routes = [tuple(t.to(device) for t in _route(1, g)) for _ in range(16)]

    def run(n):
        for i in range(n):
            x = xs[i % 16]
            for layer in layers:
                ids, w = routes[(i * 7 + layer.layer_idx) % 16]
                x = layer(x, ids, w) * 0.5 + x
        rt.synchronize()

    run(300)
    rss0 = _rss_bytes()
    dev0 = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    free0 = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    run(steps)
    assert _rss_bytes() - rss0 < 8 * 2**20, _rss_bytes() - rss0
    if device.type == "cuda":
        assert torch.cuda.memory_allocated(device) == dev0
        assert abs(torch.cuda.mem_get_info(device)[0] - free0) < 16 * 2**20
    s = rt.stats()
    assert s["forwards"] == (steps + 300) * L
    assert s["cpu_pairs"] + s["gpu_pairs"] == s["pairs"]


def test_reset_stats_and_per_layer_stats():
    rt, layers, _ = _build("lru", "0%", "bf16", torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    ids, w = _route(3, g)
    layers[1](torch.randn(3, H), ids, w)
    assert layers[1].stats()["pairs"] == 3 * K and layers[0].stats()["pairs"] == 0
    assert rt.stats()["cpu_us"] > 0
    rt.reset_stats()
    assert rt.stats()["pairs"] == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="oracle"):
        Runtime(policy="oracle")
    with pytest.raises(ValueError, match="unknown policy"):
        Runtime(policy="fifo")
    with pytest.raises(ValueError, match="unknown profile"):
        Runtime(profile="no-such-rig")
    for bad in ("lots", -1, 1.5, "150%", True):
        with pytest.raises(ValueError, match="budget"):
            Runtime(budget=bad)
    with pytest.raises(ValueError, match="threads"):
        Runtime(threads=0)
    with pytest.raises(ValueError, match="device"):
        Runtime(device="tpu")
    rt = Runtime(device="cpu", n_layers=2, threads=2)
    w = _weights("bf16", 0)
    with pytest.raises(TypeError, match="ExpertWeights"):
        HybridMoELayer(rt, 0, "weights", top_k=K)
    with pytest.raises(ValueError, match="top_k"):
        HybridMoELayer(rt, 0, w, top_k=E + 1)
    with pytest.raises(ValueError, match="layer_idx"):
        HybridMoELayer(rt, 2, w, top_k=K)
    layer = HybridMoELayer(rt, 0, w, top_k=K)
    with pytest.raises(ValueError, match="already registered"):
        HybridMoELayer(rt, 0, w, top_k=K)
    other = ExpertWeights.dense(torch.randn(E, 32, H), torch.randn(E, 32, H), torch.randn(E, H, 32))
    with pytest.raises(ValueError, match="share one expert format and shape"):
        HybridMoELayer(rt, 1, other.to_bf16(), top_k=K)
    x, ids, wt = torch.randn(3, H), torch.randint(0, E, (3, K)), torch.rand(3, K)
    with pytest.raises(ValueError, match="never registered"):
        layer(x, ids, wt)  # layer 1 missing
    layer1 = HybridMoELayer(rt, 1, w, top_k=K)
    with pytest.raises(ValueError, match="hidden_states"):
        layer(torch.randn(3, H + 1), ids, wt)
    with pytest.raises(ValueError, match="hidden_states"):
        layer(x.to(torch.int32), ids, wt)
    with pytest.raises(ValueError, match="topk_ids"):
        layer(x, ids[:, :1], wt)
    with pytest.raises(ValueError, match="topk_ids"):
        layer(x, ids.float(), wt)
    with pytest.raises(ValueError, match="topk_ids must lie"):
        layer(x, ids + E, wt)
    with pytest.raises(ValueError, match="topk_weights"):
        layer(x, ids, wt.to(torch.int64))
    with pytest.raises(ValueError, match="topk_weights"):
        layer(x, ids, wt[:2])
    with pytest.raises(ValueError, match="finite"):
        layer(x, ids, wt * float("nan"))
    out = layer1(x, ids, wt)  # still usable after the errors
    assert torch.isfinite(out).all()
    rt3 = Runtime(device="cpu", threads=2)
    HybridMoELayer(rt3, 0, w, top_k=K)(x, ids, wt)  # starts rt3 with one layer
    with pytest.raises(ValueError, match="after the runtime started"):
        HybridMoELayer(rt3, 1, w, top_k=K)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            layer(x.cuda(), ids.cuda(), wt.cuda())


def test_gpu_bad_inputs(cuda_device):
    rt, layers, _ = _build("lru", "100%", "bf16", cuda_device)
    x = torch.randn(2, H, device=cuda_device)
    ids = torch.randint(0, E, (2, K), device=cuda_device)
    wt = torch.rand(2, K, device=cuda_device)
    layers[0](x, ids, wt)
    with pytest.raises(ValueError, match="device"):
        layers[0](x.cpu(), ids.cpu(), wt.cpu())
    layers[0](x, ids + E, wt)  # seen on the host inside the stream: raised by the next call
    torch.cuda.synchronize()
    with pytest.raises(RuntimeError, match="topk_ids must lie"):
        layers[1](x, ids, wt)
    layers[1](x, ids, wt)  # the error was reported once; the runtime keeps working
    rt.synchronize()
    with pytest.raises(ValueError, match="top_k"):  # 1 slot cannot hold top_k = 2 experts
        _rt2, l2, _ = _build("lru", 1, "bf16", cuda_device)
        l2[0](x, ids, wt)


_HUGEPAGES_CHILD = """
import sys
import torch
from test_runtime import _build, _err, _route
dev = torch.device(sys.argv[1])
try:
    rt, layers, refs = _build("value", "30%", "bf16", dev)
except ValueError as e:
    print("ValueError:", e)
    raise SystemExit(0)
g = torch.Generator().manual_seed(5)
for _ in range(3):
    x = torch.randn(3, 64, generator=g).to(dev)
    ids, w = _route(3, g)
    ids, w = ids.to(dev), w.to(dev)
    assert _err(layers[0](x, ids, w), refs[0](x, ids, w)) <= 3e-2
rt.synchronize()
print("ok;", rt.stats()["host_store"])
"""

# What the host store says it is, per (device type, setting): its backing (runtime.h host_store()).
_HOST_STORE = {
    ("cpu", "0"): "heap (HYBRID_MOE_HUGEPAGES=0);",
    ("cpu", "1"): "heap, huge-page advised;",
    ("cuda", "0"): "cudaHostAlloc (HYBRID_MOE_HUGEPAGES=0);",
    ("cuda", "1"): "huge-page advised, registered;",
}


@pytest.mark.parametrize("value,expect", [("0", "ok"), ("1", "ok"), ("yes", "ValueError:")])
def test_hugepages_setting(value, expect, device):
    """HYBRID_MOE_HUGEPAGES (read once per process, hence a child): 0 and 1 give the same results,
    anything else is a ValueError naming the variable when the runtime builds its store. The
    runtime's stats name the store's backing (on the GPU: huge-page advised memory page-locked with
    cudaHostRegister, or cudaHostAlloc) and its share on huge pages."""
    from pathlib import Path

    r = run_python(
        _HUGEPAGES_CHILD,
        str(device),
        env={"HYBRID_MOE_HUGEPAGES": value},
        cwd=Path(__file__).parent,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(expect), r.stdout
    if expect.startswith("ValueError"):
        assert "HYBRID_MOE_HUGEPAGES" in r.stdout
        return
    store = r.stdout.strip().split("ok; ", 1)[1]
    assert store.startswith(_HOST_STORE[(device.type, value)]), store
    assert re.search(r"; \d+% of \d+\.\d [MG]B on huge pages$", store), store


def test_exports():
    assert hybrid_moe.Runtime is Runtime and hybrid_moe.HybridMoELayer is HybridMoELayer
    assert callable(hybrid_moe.patch)
