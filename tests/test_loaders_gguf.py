"""GGUF expert loader: tiny files written with gguf.GGUFWriter, read back and compared with the
source tensors (bf16 exact; q8_0 byte-exact against gguf's own quantizer and within Q8_0
tolerance of the float source), plus every error path (missing tensor, unsupported type, not MoE,
truncated file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from hybrid_moe.loaders import ExpertWeights, GGUFExperts, dequantize_q8_0, load_gguf_experts  # noqa: E402

QT = gguf.GGMLQuantizationType
# experts, hidden, expert intermediate (H, I multiples of 32 for Q8_0), top-k
E, H, I, K = 4, 64, 96, 2
ARCH = "qwen3moe"


def _source(seed: int, n_layer: int) -> dict[int, dict[str, np.ndarray]]:
    """Random float32 expert weights per layer: gate/up [E, I, H], down [E, H, I]."""
    rng = np.random.default_rng(seed)
    return {
        n: {
            "gate": rng.standard_normal((E, I, H), dtype=np.float32),
            "up": rng.standard_normal((E, I, H), dtype=np.float32),
            "down": rng.standard_normal((E, H, I), dtype=np.float32) * 0.1,
        }
        for n in range(n_layer)
    }


def _encode(x: np.ndarray, qtype) -> np.ndarray:
    """The bytes gguf itself would store for x (BF16: uint8 [..., 2n]; Q8_0: uint8 blocks)."""
    return gguf.quants.quantize(x, qtype)


def write_gguf(
    path,
    src,
    qtype=QT.BF16,
    per_expert=False,
    dense_first=0,
    skip=(),
    overrides=None,
    arch=ARCH,
    expert_count=E,
):
    """A tiny MoE GGUF: blocks < dense_first have no experts; `skip` leaves tensor names out;
    `overrides` maps a tensor name to its GGML type (to write one tensor in another type)."""
    overrides = overrides or {}
    w = gguf.GGUFWriter(str(path), arch)
    n_layer = dense_first + len(src)
    w.add_block_count(n_layer)
    w.add_embedding_length(H)
    if expert_count:
        w.add_expert_count(expert_count)
        w.add_expert_used_count(K)
    w.add_expert_feed_forward_length(I)
    for j, mats in src.items():
        n = dense_first + j
        for p in ("gate", "up", "down"):
            tensors = (
                {f"blk.{n}.ffn_{p}.{x}.weight": mats[p][x] for x in range(E)}
                if per_expert
                else {f"blk.{n}.ffn_{p}_exps.weight": mats[p]}
            )
            for name, t in tensors.items():
                if name in skip:
                    continue
                qt = overrides.get(name, qtype)
                if qt == QT.F32:
                    w.add_tensor(name, t)
                else:
                    w.add_tensor(name, _encode(t, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("per_expert", [False, True], ids=["fused", "per-expert"])
def test_bf16_exact(tmp_path, per_expert):
    src = _source(1, 2)
    path = write_gguf(tmp_path / "m.gguf", src, QT.BF16, per_expert=per_expert, dense_first=1)
    f = GGUFExperts(path)
    assert f.info.moe_layers == [1, 2]  # block 0 is dense
    assert (f.info.n_expert, f.info.top_k, f.info.hidden, f.info.intermediate) == (E, K, H, I)
    assert f.info.layout[1] == ("per-expert" if per_expert else "fused")
    layers = load_gguf_experts(path)
    assert sorted(layers) == [1, 2]
    for j, mats in src.items():
        w = layers[j + 1]
        assert isinstance(w, ExpertWeights) and w.format == "bf16"
        assert (w.n_expert, w.hidden, w.intermediate) == (E, H, I)
        for p in ("gate", "up", "down"):
            want = torch.from_numpy(mats[p]).to(torch.bfloat16)  # round-to-nearest-even, as gguf
            got = getattr(w, p)
            assert got.dtype == torch.bfloat16 and got.shape == want.shape
            assert torch.equal(got, want), p


@pytest.mark.parametrize("per_expert", [False, True], ids=["fused", "per-expert"])
def test_q8_0_byte_exact_and_close(tmp_path, per_expert):
    src = _source(2, 1)
    path = write_gguf(tmp_path / "q.gguf", src, QT.Q8_0, per_expert=per_expert)
    w = load_gguf_experts(path)[0]
    assert w.format == "q8_0" and (w.n_expert, w.hidden, w.intermediate) == (E, H, I)
    assert w.gate.dtype == torch.uint8 and tuple(w.gate.shape) == (E, I, H // 32 * 34)
    assert tuple(w.down.shape) == (E, H, I // 32 * 34)
    dense = w.dequantize()
    for k, p in enumerate(("gate", "up", "down")):
        want_bytes = _encode(src[0][p], QT.Q8_0)
        assert np.array_equal(getattr(w, p).numpy(), want_bytes), p  # kept quantized, untouched
        # Decoding agrees with gguf's dequantizer exactly and with the source within Q8_0 error:
        # per block d = max|x|/127 rounded to fp16 (relative error <= 2^-11), so
        # |x - d16*q| <= d/2 (rounding q) + 127 * d * 2^-11 (the scale's rounding).
        ref = gguf.quants.dequantize(want_bytes, QT.Q8_0)
        assert np.array_equal(dense[k].numpy(), ref), p
        x = src[0][p]
        blocks = np.abs(x).reshape(*x.shape[:-1], -1, 32).max(-1, keepdims=True) / 127
        err = np.abs(dense[k].numpy() - x).reshape(*x.shape[:-1], -1, 32)
        assert np.all(err <= blocks * (0.5 + 127 * 2.0**-11) * 1.001), p
        assert np.abs(dense[k].numpy() - x).max() > 0  # really quantized


def test_dequantize_q8_0_matches_gguf_on_odd_rows():
    x = np.random.default_rng(3).standard_normal((3, 5, 160), dtype=np.float32)
    b = _encode(x, QT.Q8_0)
    got = dequantize_q8_0(torch.from_numpy(b))
    assert np.array_equal(got.numpy(), gguf.quants.dequantize(b, QT.Q8_0))
    with pytest.raises(ValueError, match="multiple of 34"):
        dequantize_q8_0(torch.zeros(2, 33, dtype=torch.uint8))


def test_f32_tensors_load_as_f32(tmp_path):
    src = _source(4, 1)
    path = write_gguf(tmp_path / "f.gguf", src, QT.F32)
    w = load_gguf_experts(path)[0]
    assert w.format == "f32" and torch.equal(w.down, torch.from_numpy(src[0]["down"]))


def test_unsupported_type_names_tensor_and_supported(tmp_path):
    src = _source(5, 1)
    name = "blk.0.ffn_down_exps.weight"
    # Q4_0 stands in for any unsupported quant (gguf's writer can encode it without a C library).
    path = write_gguf(tmp_path / "u.gguf", src, QT.BF16, overrides={name: QT.Q4_0})
    with pytest.raises(ValueError, match=rf"{name} has type Q4_0.*BF16, Q8_0"):
        load_gguf_experts(path)


def test_mixed_types_in_one_layer_is_an_error(tmp_path):
    src = _source(6, 1)
    path = write_gguf(
        tmp_path / "x.gguf", src, QT.BF16, overrides={"blk.0.ffn_up_exps.weight": QT.Q8_0}
    )
    with pytest.raises(ValueError, match="mixes tensor types"):
        load_gguf_experts(path)


@pytest.mark.parametrize(
    "missing,per_expert", [("blk.0.ffn_down_exps.weight", False), ("blk.0.ffn_up.3.weight", True)]
)
def test_missing_tensor_is_named(tmp_path, missing, per_expert):
    path = write_gguf(
        tmp_path / "m.gguf", _source(7, 1), QT.BF16, per_expert=per_expert, skip={missing}
    )
    with pytest.raises(ValueError, match=rf"tensor {missing} is missing"):
        load_gguf_experts(path)


def test_not_moe_and_bad_layer(tmp_path):
    path = write_gguf(tmp_path / "d.gguf", _source(8, 1), QT.BF16, expert_count=0)
    with pytest.raises(ValueError, match="not an MoE model"):
        GGUFExperts(path)
    ok = GGUFExperts(write_gguf(tmp_path / "ok.gguf", _source(8, 1), QT.BF16))
    with pytest.raises(ValueError, match=r"block 5 has no routed experts; MoE blocks are \[0\]"):
        ok.layer(5)


def test_layers_argument_forms(tmp_path):
    path = write_gguf(tmp_path / "l.gguf", _source(10, 2), QT.BF16)
    assert list(load_gguf_experts(path, 1)) == [1]  # one block index
    assert list(load_gguf_experts(path, [1, 0])) == [1, 0]
    assert list(load_gguf_experts(path)) == [0, 1]
    with pytest.raises(TypeError, match="block index, a list of them or None"):
        load_gguf_experts(path, 1.5)
    with pytest.raises(TypeError, match="must hold block indices"):
        load_gguf_experts(path, ["0"])


def test_corrupted_bytes_give_value_errors_or_load(tmp_path):
    """Random byte flips and cuts: a clear ValueError or (damage inside tensor data, which GGUF
    cannot detect) a normal load; never another exception."""
    import random

    data = write_gguf(tmp_path / "f.gguf", _source(11, 1), QT.Q8_0).read_bytes()
    rng = random.Random(0)
    bad = tmp_path / "bad.gguf"
    outcomes = set()
    for _ in range(60):
        b = bytearray(data)
        span = min(len(b), rng.choice([64, 512, len(b)]))
        for _ in range(rng.choice([1, 4, 8])):
            b[rng.randrange(span)] = rng.randrange(256)
        if rng.random() < 0.2:
            b = b[: rng.randrange(len(b))]
        bad.write_bytes(bytes(b))
        try:
            load_gguf_experts(bad)
            outcomes.add("loaded")
        except ValueError:
            outcomes.add("ValueError")
    assert "ValueError" in outcomes


@pytest.mark.parametrize("where", [0.02, 0.5, 0.97])
def test_truncated_file_is_a_clear_error(tmp_path, where):
    full = write_gguf(tmp_path / "t.gguf", _source(9, 1), QT.Q8_0).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: int(len(full) * where)])
    with pytest.raises(ValueError, match=r"corrupt or truncated|truncated GGUF"):
        load_gguf_experts(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf_experts(junk)
    with pytest.raises(FileNotFoundError):
        load_gguf_experts(tmp_path / "absent.gguf")
