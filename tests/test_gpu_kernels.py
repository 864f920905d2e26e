"""GPU expert kernels against a float32 torch reference (decode, prefill, CPU-partials add), the
expert byte formats, and the pinned store -> slab copy. GPU tests skip cleanly without a GPU;
the format tests and the 'built without CUDA' error run everywhere."""

from __future__ import annotations

import pytest
import torch

from hybrid_moe import gpu


def test_q8_0_round_trip_and_layout():
    w = torch.randn(8, 96) * 0.3
    b = gpu.quantize_q8_0(w)
    assert b.shape == (8, 3 * 34)
    back = gpu.dequantize_q8_0(b)
    scale = w.reshape(8, 3, 32).abs().amax(-1, keepdim=True) / 127
    assert ((back - w).reshape(8, 3, 32).abs() <= scale * 0.51 + 1e-3).all()
    lay = gpu.expert_layout("q8_0", 2048, 768)
    assert lay["stride"] % 256 == 0 and lay["weight_bytes"] == 3 * 768 * 64 * 34


def test_pack_unpack_bf16_exact():
    g, u, d = torch.randn(3, 64, 96), torch.randn(3, 64, 96), torch.randn(3, 96, 64)
    packed = gpu.pack_experts(g, u, d, "bf16")
    g1, _u1, d1 = gpu.unpack_expert(packed[1], "bf16", 96, 64)
    assert torch.equal(g1, g[1].bfloat16().float()) and torch.equal(d1, d[1].bfloat16().float())
    with pytest.raises(ValueError, match="gate/up"):
        gpu.pack_experts(g, u, d.transpose(1, 2), "bf16")


@pytest.mark.skipif(gpu.gpu_built(), reason="only for builds without CUDA")
def test_built_without_cuda_raises():
    with pytest.raises(RuntimeError, match="built without CUDA"):
        gpu.DeviceSlab("bf16", 64, 64, n_slots=1)


def _setup(fmt, hidden, inter, n_exp, n_slots=None):
    gen = torch.Generator().manual_seed(hash((fmt, hidden, inter)) & 0xFFFF)
    g = torch.randn(n_exp, inter, hidden, generator=gen) / hidden**0.5
    u = torch.randn(n_exp, inter, hidden, generator=gen) / hidden**0.5
    d = torch.randn(n_exp, hidden, inter, generator=gen) / inter**0.5
    packed = gpu.pack_experts(g, u, d, fmt)
    store = gpu.PinnedExpertStore.from_tensors(packed, fmt, hidden, inter)
    slab = gpu.DeviceSlab(fmt, hidden, inter, n_slots=n_slots or n_exp)
    mover = gpu.Mover(store, slab)
    # slot s holds expert perm[s]
    perm = torch.randperm(n_exp, generator=gen)[: slab.n_slots].tolist()
    for s, e in enumerate(perm):
        mover.request_fetch(e, s)
    mover.wait_idle()
    assert mover.residency() == perm
    f32 = [tuple(t.cuda() for t in gpu.unpack_expert(packed[e], fmt, hidden, inter)) for e in perm]
    return store, slab, mover, perm, f32


def _plan(n_tok, k, n_slots, seed):
    gen = torch.Generator().manual_seed(seed)
    slots = torch.stack([torch.randperm(n_slots, generator=gen)[:k] for _ in range(n_tok)]).reshape(
        -1
    )
    tokens = torch.arange(n_tok).repeat_interleave(k)
    weights = torch.rand(n_tok * k, generator=gen) + 0.1
    perm = torch.randperm(tokens.numel(), generator=gen)  # any order is accepted
    return tokens[perm], slots[perm], weights[perm]


@pytest.mark.parametrize(
    "fmt,hidden,inter",
    [("bf16", 512, 256), ("q8_0", 512, 256), ("bf16", 320, 96), ("q8_0", 320, 96)],
)
@pytest.mark.parametrize("path", ["decode", "prefill"])
def test_expert_kernels_match_reference(cuda_device, fmt, hidden, inter, path):
    _, slab, _, _, f32 = _setup(fmt, hidden, inter, n_exp=12)
    run = gpu.run_decode if path == "decode" else gpu.run_prefill
    # decode: fp32 h -> tight; prefill: h rounded to bf16 for the tensor cores -> looser
    tol = 2e-3 if path == "decode" else 1.5e-2
    for n_tok in (1, 3, 64, 512):
        tokens, slots, weights = _plan(n_tok, 4, slab.n_slots, seed=n_tok)
        x = torch.randn(n_tok, hidden, device=cuda_device).bfloat16()
        ref = gpu.reference_moe(x, tokens, weights, [f32[int(s)] for s in slots])
        for out_dtype in (torch.float32, torch.bfloat16):
            base = torch.randn(n_tok, hidden, device=cuda_device).to(
                out_dtype
            )  # poisoned, non-zero
            out = run(slab, x, tokens, slots, weights, out=base.clone())
            torch.cuda.synchronize()
            got = out.float() - base.float()
            err = ((got - ref).norm() / ref.norm()).item()
            lim = tol if out_dtype == torch.float32 else max(tol, 1e-2) * 4
            assert err < lim, f"{path} {fmt} T={n_tok} {out_dtype}: rel err {err:.2e} >= {lim}"


def test_add_partials(cuda_device):
    for dt in (torch.float32, torch.bfloat16):
        out = torch.randn(5, 333, device=cuda_device).to(dt)
        part = torch.randn(5, 333, device=cuda_device)
        want = out.float() + part
        gpu.add_partials(out, part)
        torch.cuda.synchronize()
        tol = 0 if dt == torch.float32 else 2e-2
        assert torch.allclose(out.float(), want, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="partial must be float32"):
        gpu.add_partials(out, part.bfloat16())


def test_fetched_slot_is_byte_equal_to_store(cuda_device):
    store, slab, _mover, perm, _ = _setup("q8_0", 2048, 768, n_exp=4)
    for s, e in enumerate(perm):
        assert torch.equal(slab.read_slot(s), store.expert_bytes(e))


def test_store_from_file_reads_experts(cuda_device, tmp_path):
    g, u, d = torch.randn(3, 64, 128), torch.randn(3, 64, 128), torch.randn(3, 128, 64)
    packed = gpu.pack_experts(g, u, d, "bf16")
    path = tmp_path / "experts.bin"
    path.write_bytes(b"\x07" * 100 + packed.numpy().tobytes())
    store = gpu.PinnedExpertStore.from_file(path, "bf16", 128, 64, 3, offset=100)
    for e in range(3):
        assert torch.equal(store.expert_bytes(e), packed[e])
    with pytest.raises(ValueError, match="ends before"):
        gpu.PinnedExpertStore.from_file(path, "bf16", 128, 64, 4, offset=100)


def test_bad_arguments_raise(cuda_device):
    _, slab, _, _, _ = _setup("bf16", 256, 64, n_exp=4)
    x = torch.randn(2, 256, device=cuda_device).bfloat16()
    with pytest.raises(ValueError, match="slots must be in"):
        gpu.run_decode(slab, x, [0, 1], [0, 9], [1.0, 1.0])
    with pytest.raises(ValueError, match="tokens must be in"):
        gpu.run_decode(slab, x, [0, 2], [0, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match="bfloat16"):
        gpu.run_decode(slab, x.float(), [0], [0], [1.0])
    with pytest.raises(ValueError, match=r"x must be \[T, 256\]"):
        gpu.run_prefill(slab, x[:, :128], [0], [0], [1.0])


def test_slab_budget_and_oom(cuda_device):
    lay = gpu.expert_layout("bf16", 2048, 768)
    slab = gpu.DeviceSlab("bf16", 2048, 768, budget_bytes=3 * lay["stride"] + 5)
    assert slab.n_slots == 3
    assert gpu.DeviceSlab("bf16", 256, 64, fraction=0.25, total_experts=10).n_slots == 3
    with pytest.raises(ValueError, match="holds no expert"):
        gpu.DeviceSlab("bf16", 2048, 768, budget_bytes=100)
    free, _ = torch.cuda.mem_get_info()
    with pytest.raises(RuntimeError, match=r"out of device memory.*budget.*free"):
        gpu.DeviceSlab("bf16", 2048, 768, budget_bytes=free + 64 * lay["stride"])


@pytest.mark.parametrize(
    "fmt,hidden,inter",
    [("bf16", 2048, 768), ("q8_0", 2048, 768), ("bf16", 2304, 1536), ("q8_0", 2304, 1536)],
)
@pytest.mark.parametrize("kernels", ["stream_regs", "stream_async", "rowgrid_regs"])
def test_decode_model_shapes_top8(cuda_device, fmt, hidden, inter, kernels, monkeypatch):
    """Qwen3-30B-A3B shapes (the benchmark's: full 16-byte segments, Q8_0 16-byte rows) and a
    shape with partial segments / several Q8_0 pieces per row (H=2304: 72 blocks; I=1536: 48),
    with both phase-1 kernels: the streaming one (default; BF16 rows of 4608 bytes = 2 full
    segments + 512 bytes, Q8_0 rows of 72 blocks = 32 + 32 + 8) and the one-warp-per-row grid
    (HM_DECODE_STREAM=0); phase 2 with all pairs' down rows in flight (HM_DECODE_DOWN=1, the
    Q8_0 default; I=1536: BF16 pieces 1536 + 1536, Q8_0 32 + 16 blocks) and with register loads
    (HM_DECODE_DOWN=0, the BF16 default)."""
    phase1, phase2 = kernels.split("_")
    monkeypatch.setenv("HM_DECODE_STREAM", "1" if phase1 == "stream" else "0")
    monkeypatch.setenv("HM_DECODE_DOWN", "1" if phase2 == "async" else "0")
    _, slab, _, _, f32 = _setup(fmt, hidden, inter, n_exp=10)
    for n_tok in (1, 2, 5):
        tokens, slots, weights = _plan(n_tok, 8, slab.n_slots, seed=100 + n_tok)
        x = torch.randn(n_tok, hidden, device=cuda_device).bfloat16()
        ref = gpu.reference_moe(x, tokens, weights, [f32[int(s)] for s in slots])
        for out_dtype in (torch.float32, torch.bfloat16):
            base = torch.randn(n_tok, hidden, device=cuda_device).to(out_dtype)
            out = gpu.run_decode(slab, x, tokens, slots, weights, out=base.clone())
            torch.cuda.synchronize()
            err = (((out.float() - base.float()) - ref).norm() / ref.norm()).item()
            lim = 2e-3 if out_dtype == torch.float32 else 4e-2
            assert err < lim, f"{fmt} {hidden}x{inter} T={n_tok} {out_dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("fmt", ["bf16", "q8_0"])
def test_decode_graph_replay_and_pdl_off_match(cuda_device, fmt, monkeypatch):
    """One captured decode (max_pairs = 16) replayed with plans of 3, 16 and 7 pairs written into
    the same device buffers (the pair count is read on the device), each checked against the
    reference; and eager results with programmatic dependent launch off (HM_DECODE_PDL=0) are
    bit-identical."""
    hidden, inter, n_tok, max_pairs = 512, 256, 2, 16
    _, slab, _, _, f32 = _setup(fmt, hidden, inter, n_exp=12)
    dev = cuda_device
    buf = {
        "token_ptr": torch.zeros(n_tok + 1, dtype=torch.int32, device=dev),
        "pair_token": torch.zeros(max_pairs, dtype=torch.int32, device=dev),
        "pair_slot": torch.zeros(max_pairs, dtype=torch.int32, device=dev),
        "pair_weight": torch.zeros(max_pairs, dtype=torch.float32, device=dev),
    }
    x = torch.randn(n_tok, hidden, device=dev).bfloat16()
    h = torch.empty(max_pairs, inter, dtype=torch.float32, device=dev)
    out = torch.zeros(n_tok, hidden, device=dev)

    def load(n_pairs, seed):
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, n_tok, (n_pairs,), generator=gen)
        slots = torch.randint(0, slab.n_slots, (n_pairs,), generator=gen)
        weights = torch.rand(n_pairs, generator=gen) + 0.1
        plan = gpu.device_plan(tokens, slots, weights, n_tok, dev)
        for k, v in plan.items():
            buf[k][: v.numel()].copy_(v)
        return gpu.reference_moe(x, tokens, weights, [f32[int(s)] for s in slots])

    load(max_pairs, 0)
    gpu.launch_decode_raw(slab, buf, x, h, out, max_pairs)  # warm-up outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        gpu.launch_decode_raw(slab, buf, x, h, out, max_pairs)
    for n_pairs, seed in ((3, 1), (16, 2), (7, 3)):
        ref = load(n_pairs, seed)
        base = torch.randn(n_tok, hidden, device=dev)
        out.copy_(base)
        g.replay()
        torch.cuda.synchronize()
        err = (((out - base) - ref).norm() / ref.norm()).item()
        assert err < 2e-3, f"graph replay {fmt} with {n_pairs} pairs: rel err {err:.2e}"

    tokens, slots, weights = _plan(3, 4, slab.n_slots, seed=5)
    xe = torch.randn(3, hidden, device=dev).bfloat16()
    base = torch.randn(3, hidden, device=dev)
    monkeypatch.setenv("HM_DECODE_PDL", "1")  # explicit: the default is off for Q8_0
    on = gpu.run_decode(slab, xe, tokens, slots, weights, out=base.clone())
    monkeypatch.setenv("HM_DECODE_PDL", "0")
    off = gpu.run_decode(slab, xe, tokens, slots, weights, out=base.clone())
    torch.cuda.synchronize()
    assert torch.equal(on, off)
