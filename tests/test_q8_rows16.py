"""Q8_0 rows in groups of 16 (csrc/core/q8_rows16.h): the byte layout, lossless round trips and
clear errors. The kernels that read it are checked in test_cpu_experts.py."""

from __future__ import annotations

import pytest
import torch

from hybrid_moe import formats
from hybrid_moe._native import native
from hybrid_moe.cpu_experts import CpuExpertStore, run_layer


def _q8_store(E=3, H=96, I=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I), fmt="q8_0")


def test_layout_matches_the_documented_offsets():
    """Every scale and value of the gate matrix where core/q8_rows16.h says it is."""
    st = _q8_store()
    r16 = st.with_packing("q8_rows16")
    H, I = st.hidden, st.intermediate
    nb, rb = H // 32, H // 32 * 34
    lay = st.layout
    src = st.data[1, lay["gate_offset"] : lay["gate_offset"] + I * rb].reshape(I, nb, 34)
    dst = r16.data[1, lay["gate_offset"] : lay["gate_offset"] + I * rb]
    group = 16 * rb
    for r in (0, 5, 17, I - 1):
        g, rr = divmod(r, 16)
        base = g * group
        for b in (0, nb - 1):
            sc = base + 32 * b + 2 * rr
            assert torch.equal(dst[sc : sc + 2], src[r, b, :2])
            for k in (0, 3, 4, 31):
                j, i = divmod(k, 4)
                off = base + 32 * nb + 512 * b + 64 * j + 4 * rr + i
                assert int(dst[off]) == int(src[r, b, 2 + k]) ^ 0x80


def test_round_trip_is_lossless_and_padding_stays_zero():
    st = _q8_store(E=2, H=160, I=96, seed=1)
    r16 = st.with_packing("q8_rows16")
    assert not torch.equal(r16.data, st.data)
    assert torch.equal(r16.with_packing("gguf").data, st.data)
    for a, b in zip(r16.dequantized(), st.dequantized(), strict=True):
        assert torch.equal(a, b)
    assert r16.with_packing("q8_rows16") is r16


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda st: st.with_packing("rows32"), "packing must be one of"),
        (
            lambda st: formats.repack_experts(
                st.data, "bf16", st.hidden, st.intermediate, "gguf", "q8_rows16"
            ),
            "needs fmt q8_0",
        ),
        (
            lambda st: formats.repack_experts(
                st.data[:, :-1], "q8_0", st.hidden, st.intermediate, "gguf", "q8_rows16"
            ),
            "packed must be a uint8 CPU tensor",
        ),
        (
            lambda st: native.expert_layout("q8_0", 100, 64),
            "multiple of 32",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(_q8_store())


def test_kernel_rejects_q8_rows16_for_bf16():
    g = torch.Generator().manual_seed(2)
    st = CpuExpertStore.from_tensors(
        *(torch.randn(2, 32, 64, generator=g) for _ in range(2)),
        torch.randn(2, 64, 32, generator=g),
        fmt="bf16",
    )
    bad = CpuExpertStore(st.fmt, st.hidden, st.intermediate, st.data, st.layout, "q8_rows16")
    with pytest.raises(ValueError, match="needs the q8_0 format"):
        run_layer(bad, torch.randn(1, 64), torch.tensor([[0]]), torch.ones(1, 1))


def test_gpu_conversion_gives_the_gguf_rows():
    """The mover's device conversion (csrc/cuda/q8_rows16_unpack.cu) against the CPU repack: every
    weight byte equal (padding is not written)."""
    if not torch.cuda.is_available() or not getattr(native, "gpu_built", True):
        pytest.skip("no CUDA device (or hybrid_moe built without CUDA)")
    st = _q8_store(E=2, H=160, I=96, seed=4)
    src = st.with_packing("q8_rows16").data.cuda()
    dst = torch.zeros_like(src)
    stream = torch.cuda.current_stream().cuda_stream
    for e in range(2):
        native.gpu_q8_rows16_to_gguf(
            src[e].data_ptr(), dst[e].data_ptr(), st.hidden, st.intermediate, stream
        )
    torch.cuda.synchronize()
    lay = st.layout
    for name in ("gate", "up", "down"):
        o, n = lay[f"{name}_offset"], lay[f"{name}_bytes"]
        assert torch.equal(dst[:, o : o + n].cpu(), st.data[:, o : o + n]), name
