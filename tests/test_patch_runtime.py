"""patch(model, Runtime): a tiny random Qwen3-MoE from a transformers config, patched with a
Runtime, gives the original's logits under every policy and budgets 0/30/100% (eager, CPU and GPU),
and on the GPU machine also when its MoE blocks are captured in a CUDA graph and replayed.

Tolerance: the runtime stores float32 experts as bf16 and its kernels read bf16 (GPU) or
bf16-rounded (CPU) activations, so logits are compared by relative norm < 5e-2 (near-tie top-k
flips in the next layer are possible, as in test_patch_models); each step is also compared
block by block, which has no flips: max error <= 3e-2 of the block output's max.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hybrid_moe import Runtime, patch  # noqa: E402
from hybrid_moe.layer import HybridMoELayer  # noqa: E402
from hybrid_moe.patch import patched_blocks  # noqa: E402

POLICIES = ["cpu", "static", "lru", "lfu", "lru-fetch", "value"]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.Qwen3MoeConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        vocab_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        head_dim=16,
        norm_topk_prob=True,
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.8, 1.2) if "norm" in name else p.normal_(0, 0.15)
    return model


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        request.getfixturevalue("cuda_device")
    return torch.device(request.param)


@pytest.mark.parametrize("budget", ["0%", "30%", "100%"])
@pytest.mark.parametrize("policy", POLICIES)
def test_patched_logits_equal_original(policy, budget, device):
    original = _model().to(device)
    patched = _model().to(device)
    rt = Runtime(budget=budget, policy=policy, device=device, threads=2)
    patch(patched, rt)
    blocks = patched_blocks(patched)
    assert len(blocks) == 2 and all(isinstance(b.experts, HybridMoELayer) for b in blocks)
    assert blocks[0].experts._next_router is not None and blocks[1].experts._next_router is None
    assert not any("experts" in n for n, _ in patched.named_parameters())  # released
    g = torch.Generator().manual_seed(1)
    for step in range(4):  # a prompt, then the cache has had time to fill
        ids = torch.randint(0, 128, (1, 6 if step == 0 else 2), generator=g).to(device)
        with torch.no_grad():
            want = original(ids).logits
            got = patched(ids).logits
        assert got.shape == want.shape and got.dtype == want.dtype
        assert _rel(got, want) < 5e-2, (step, _rel(got, want))
        rt.wait_copies()
    rt.synchronize()
    s = rt.stats()
    assert s["cpu_pairs"] + s["gpu_pairs"] == s["pairs"] > 0
    if device.type == "cuda" and policy not in ("cpu", "static") and budget != "0%":
        assert s["gpu_pairs"] > 0


def test_cuda_graph_replay_of_moe_blocks(cuda_device):
    """The patched MoE blocks captured with torch.cuda.graph replay fresh inputs correctly."""
    model = _model().to(cuda_device)
    want_blocks = [m.mlp for m in _model().to(cuda_device).model.layers]  # original blocks
    rt = Runtime(budget="30%", policy="value", device=cuda_device, threads=2)
    patch(model, rt)
    blocks = patched_blocks(model)

    # Each block is compared on its own captured input, so a near-tie top-k flip between the
    # graph and the float32 reference cannot carry from block 0 into block 1.
    ins: list[torch.Tensor] = []

    def step(x):
        ins.clear()
        outs = []
        for b in blocks:
            ins.append(x)
            out = b(x)
            out = out[0] if isinstance(out, tuple) else out
            outs.append(out)
            x = out + x
        return outs

    static_x = torch.randn(1, 1, 64, device=cuda_device)
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step(static_x)
        torch.cuda.current_stream().wait_stream(s)
        rt.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_outs = step(static_x)
        static_ins = list(ins)
        g = torch.Generator().manual_seed(2)
        for _ in range(50):
            static_x.copy_(torch.randn(1, 1, 64, generator=g).to(cuda_device))
            graph.replay()
            torch.cuda.synchronize()
            rt.check()
            for b, x_in, got in zip(want_blocks, static_ins, static_outs, strict=True):
                want = b(x_in.clone())
                want = want[0] if isinstance(want, tuple) else want
                err = float((got - want).abs().max() / want.abs().max())
                assert err < 3e-2, err
    rt.synchronize()
    st = rt.stats()
    assert st["forwards"] >= 2 * 53 and st["cpu_pairs"] + st["gpu_pairs"] == st["pairs"]
    assert st["gpu_pairs"] > 0  # the cache served replays


def test_patch_on_cpu_then_move_model_to_gpu(cuda_device):
    """The README's order for a model too large for the GPU: load and patch on the host (experts go
    into the runtime's store and are released), then move the rest of the model to the GPU."""
    original = _model().to(cuda_device)
    patched = _model()  # on the host
    rt = Runtime(budget="30%", policy="value", device=cuda_device, threads=2)
    patch(patched, rt)
    patched.to(cuda_device)
    g = torch.Generator().manual_seed(2)
    for step in range(3):
        ids = torch.randint(0, 128, (1, 5 if step == 0 else 1), generator=g).to(cuda_device)
        with torch.no_grad():
            want, got = original(ids).logits, patched(ids).logits
        assert got.device == want.device and _rel(got, want) < 5e-2, (step, _rel(got, want))
        rt.wait_copies()
    rt.synchronize()
    assert rt.stats()["gpu_pairs"] > 0
