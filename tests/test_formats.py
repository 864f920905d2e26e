"""hybrid_moe.formats: Q8_0 byte-exact against gguf-py's quantizer (ties included), exact round
trips, packing at the native layout's offsets, and the one float32 reference behind the aliases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybrid_moe import cpu_experts, formats, gpu
from hybrid_moe.loaders import tensors as loader_tensors
from hybrid_moe.reference import reference_moe


def _gguf_q8_0(x: np.ndarray) -> np.ndarray:
    gguf = pytest.importorskip("gguf")
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    return np.asarray(out).reshape(*x.shape[:-1], -1)


def _tie_blocks() -> np.ndarray:
    """Blocks whose scaled values land exactly on k + 0.5 (d = 1 or 2 exactly), plus the float32
    trap 0.5 - 2^-25 (floor(a + 0.5) would round it up), a zero block and a tiny-scale block."""
    k = np.arange(-15, 16, dtype=np.float32)  # 31 values
    ties = np.concatenate([[127.0], k + 0.5]).astype(np.float32)  # d = 127 / 127 = 1
    ties2 = np.concatenate([[-254.0], 2 * k + 1]).astype(np.float32)  # d = 2: w / d = k + 0.5
    trap = np.full(32, 0.5 - 2.0**-25, dtype=np.float32)
    trap[0] = 127.0
    trap[1::2] *= -1
    zero = np.zeros(32, dtype=np.float32)
    tiny = (np.linspace(-1, 1, 32) * 1e-6).astype(np.float32)
    return np.stack([ties, ties2, trap, zero, tiny])  # [5, 32]


def test_q8_0_byte_exact_against_gguf_random_and_ties():
    rng = np.random.default_rng(0)
    rand = (rng.standard_normal((7, 3, 160)) * rng.uniform(0.01, 5, (7, 3, 1))).astype(np.float32)
    for x in (rand, _tie_blocks().reshape(1, 5 * 32), _tie_blocks()):
        ours = formats.quantize_q8_0(torch.from_numpy(x))
        assert ours.dtype == torch.uint8 and ours.shape == (*x.shape[:-1], x.shape[-1] // 32 * 34)
        assert np.array_equal(ours.numpy(), _gguf_q8_0(x))
        assert torch.equal(formats.quantize_q8_0(x), ours)  # numpy input: same bytes
    # The ties really are ties: half-away-from-zero gives +-(k+1), half-to-even would not.
    q = formats.quantize_q8_0(_tie_blocks())[0, 2:].view(torch.int8)
    halves = torch.arange(-15, 16) + 0.5
    assert q[1:].tolist() == (torch.sign(halves) * (halves.abs() + 0.5)).int().tolist()
    assert not torch.equal(q[1:], torch.round(halves).to(torch.int8))  # half-to-even differs
    assert formats.quantize_q8_0(_tie_blocks())[2, 3:].view(torch.int8).abs().max() == 0  # trap


def test_q8_0_round_trip_bound_and_exact_decode():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, 96, generator=g) * 0.3
    b = formats.quantize_q8_0(w)
    back = formats.dequantize_q8_0(b)
    assert back.shape == w.shape and back.dtype == torch.float32
    blk = w.reshape(4, 6, 3, 32).abs().amax(-1, keepdim=True) / 127
    err = (back - w).reshape(4, 6, 3, 32).abs()
    assert (err <= blk * (0.5 + 127 * 2.0**-11) * 1.001).all() and err.max() > 0
    assert torch.equal(formats.quantize_q8_0(back), b)  # decode -> encode is a fixed point
    gguf = pytest.importorskip("gguf")
    ref = gguf.quants.dequantize(b.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(back.numpy(), ref)
    assert formats.dequantize_q8_0(b, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_rows_round_trip_exact(fmt):
    w = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(2))
    b = formats.encode_rows(w, fmt)
    assert b.shape == (3, 5, formats.row_bytes(fmt, 64))
    back = formats.decode_rows(b, fmt)
    q8 = formats.dequantize_q8_0(formats.quantize_q8_0(w))
    want = w.bfloat16().float() if fmt == "bf16" else q8
    assert torch.equal(back, want)


@pytest.mark.parametrize(
    "fmt,hidden,inter", [("bf16", 200, 72), ("q8_0", 160, 96), ("q8_0", 64, 32)]
)
def test_pack_matches_native_layout_offsets(fmt, hidden, inter):
    g = torch.Generator().manual_seed(hidden)
    E = 3
    gate = torch.randn(E, inter, hidden, generator=g)
    up = torch.randn(E, inter, hidden, generator=g)
    down = torch.randn(E, hidden, inter, generator=g)
    packed = formats.pack_experts(gate, up, down, fmt)
    lay = formats.expert_layout(fmt, hidden, inter)
    from hybrid_moe._native import native

    assert lay == dict(native.expert_layout(fmt, hidden, inter))
    assert packed.shape == (E, lay["stride"]) and lay["stride"] % 256 == 0
    covered = torch.zeros(lay["stride"], dtype=torch.bool)
    for name, t, rows, n_in in (
        ("gate", gate, inter, hidden),
        ("up", up, inter, hidden),
        ("down", down, hidden, inter),
    ):
        off, nb = lay[f"{name}_offset"], lay[f"{name}_bytes"]
        assert off % 256 == 0 and nb == rows * formats.row_bytes(fmt, n_in)
        for e in range(E):  # each matrix's bytes sit exactly at its offset
            assert torch.equal(
                packed[e, off : off + nb], formats.encode_rows(t[e], fmt).reshape(-1)
            )
        covered[off : off + nb] = True
    assert (packed[:, ~covered] == 0).all()  # padding is zero
    # unpack: all experts at once and one expert (gpu.unpack_expert's form) agree, exactly.
    ug, uu, ud = formats.unpack_experts(packed, fmt, hidden, inter)
    g1, u1, d1 = gpu.unpack_expert(packed[1], fmt, hidden, inter)
    assert torch.equal(ug, formats.decode_rows(formats.encode_rows(gate, fmt), fmt))
    assert torch.equal(ud, formats.decode_rows(formats.encode_rows(down, fmt), fmt))
    assert torch.equal(g1, ug[1]) and torch.equal(u1, uu[1]) and torch.equal(d1, ud[1])
    # CpuExpertStore packs with the same code.
    store = cpu_experts.CpuExpertStore.from_tensors(gate, up, down, fmt=fmt)
    assert torch.equal(store.data, packed)


def test_pack_encoded_matches_pack_experts_and_layer_packer():
    from hybrid_moe.layer import pack_expert_weights
    from hybrid_moe.loaders import ExpertWeights

    g = torch.Generator().manual_seed(4)
    gate, up, down = (
        torch.randn(2, 32, 64, generator=g),
        torch.randn(2, 32, 64, generator=g),
        torch.randn(2, 64, 32, generator=g),
    )
    q = [formats.quantize_q8_0(t) for t in (gate, up, down)]
    fmt, packed = pack_expert_weights(ExpertWeights("q8_0", *q))
    assert fmt == "q8_0" and torch.equal(packed, formats.pack_experts(gate, up, down, "q8_0"))
    fmt, packed = pack_expert_weights(ExpertWeights.dense(gate, up, down))  # f32 -> bf16
    assert fmt == "bf16" and torch.equal(packed, formats.pack_experts(gate, up, down, "bf16"))


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        formats.quantize_q8_0(torch.randn(2, 40))
    with pytest.raises(ValueError, match="multiple of 34"):
        formats.dequantize_q8_0(torch.zeros(2, 33, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"torch\.uint8"):
        formats.dequantize_q8_0(torch.zeros(2, 34))
    with pytest.raises(ValueError, match="fmt must be one of"):
        formats.pack_experts(*(torch.randn(1, 32, 32) for _ in range(3)), "q4")
    with pytest.raises(ValueError, match="gate/up"):
        formats.pack_experts(*(torch.randn(1, 32, 64) for _ in range(3)), "bf16")
    with pytest.raises(ValueError, match="multiple of 32"):
        g40 = torch.randn(1, 40, 64)
        formats.pack_experts(g40, g40, torch.randn(1, 64, 40), "q8_0")
    lay = formats.expert_layout("bf16", 64, 32)
    with pytest.raises(ValueError, match=f"packed must be uint8 \\[E, {lay['stride']}\\]"):
        formats.unpack_experts(torch.zeros(2, 7, dtype=torch.uint8), "bf16", 64, 32)
    with pytest.raises(ValueError, match="down: expected 1 experts"):
        formats.pack_encoded(
            "bf16",
            64,
            32,
            torch.zeros(1, 32 * 128, dtype=torch.uint8),
            torch.zeros(1, 32 * 128, dtype=torch.uint8),
            torch.zeros(1, 5, dtype=torch.uint8),
        )


def test_aliases_are_the_canonical_functions():
    assert gpu.quantize_q8_0 is formats.quantize_q8_0 is cpu_experts.quantize_q8_0
    assert gpu.dequantize_q8_0 is formats.dequantize_q8_0 is cpu_experts.dequantize_q8_0
    assert loader_tensors.dequantize_q8_0 is formats.dequantize_q8_0
    assert gpu.pack_experts is formats.pack_experts and gpu.expert_layout is formats.expert_layout


def _brute_force_moe(x, ids, w, gate, up, down):
    """Token by token, pair by pair, in float64: the check on reference_moe itself."""
    out = torch.zeros(x.shape[0], down.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            xt = x[t].double()
            h = torch.nn.functional.silu(gate[e].double() @ xt) * (up[e].double() @ xt)
            out[t] += float(w[t, j]) * (down[e].double() @ h)
    return out


def test_one_reference_behind_all_three_entry_points():
    g = torch.Generator().manual_seed(5)
    E, H, inter, T, k = 5, 48, 40, 7, 3
    gate = torch.randn(E, inter, H, generator=g) * 0.2
    up = torch.randn(E, inter, H, generator=g) * 0.2
    down = torch.randn(E, H, inter, generator=g) * 0.2
    x = torch.randn(T, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    w = torch.rand(T, k, generator=g) + 0.1
    ref = reference_moe(x, ids, w, gate, up, down)
    want = _brute_force_moe(x, ids, w, gate, up, down)
    assert ref.dtype == torch.float32 and ref.abs().max() > 0.1
    assert (ref.double() - want).abs().max() <= 1e-5 * want.abs().max()
    assert torch.equal(cpu_experts.reference_layer(gate, up, down, x, ids, w), ref)
    # gpu.reference_moe's pair form: one pair per (t, j), experts given per pair.
    tokens = torch.arange(T).repeat_interleave(k)
    per_expert = [(gate[e], up[e], down[e]) for e in range(E)]
    pair_experts = [per_expert[int(e)] for e in ids.reshape(-1)]
    pairs = gpu.reference_moe(x, tokens, w.reshape(-1), pair_experts)
    assert (pairs.double() - want).abs().max() <= 1e-5 * want.abs().max()
