"""Expert weight formats on the Python side: the ONE implementation of Q8_0 encode/decode, row
encodings and packing into the one-contiguous-range expert layout (csrc/core/weight_format.h).

[NOTE] Why here and how:
  * Byte offsets are never recomputed in Python: expert_layout() asks the native library
    (hm::make_expert_layout), so Python packing and the C++/CUDA kernels cannot disagree.
  * Q8_0 follows GGUF exactly (gguf-py quants.py / llama.cpp quantize_row_q8_0_ref), in float32:
        d   = max|w_block| / 127              (float32, stored as IEEE fp16, round-to-nearest-even)
        inv = 0 if d == 0 else 1 / d          (float32; q is computed from the float32 d, not fp16)
        q   = round_half_away_from_zero(w * inv)
    Ties (x.5) go AWAY from zero; torch.round / np.round go to even and would differ on ties.
    Rounding uses gguf's floor(a) + floor(2 * (a - floor(a))), not floor(a + 0.5): the latter
    rounds 0.5 - 2^-25 up, because a + 0.5 itself rounds in float32.
  * Shapes follow GGUF's expert tensors [E, n_out, n_in]: rows are encoded along n_in:
        bf16: n_in * 2 bytes per row;  q8_0: n_in / 32 blocks of {fp16 d; int8 q[32]} = 34 bytes.
    An expert is [gate: I x H][up: I x H][down: H x I], each at its layout offset, stride bytes.
"""

from __future__ import annotations

import numpy as np
import torch

FORMATS = ("bf16", "q8_0")  # formats the kernels consume
# Host-side row packings (core/weight_format.h): GGUF rows, or Q8_0 rows in groups of 16 for the
# CPU kernels (core/q8_rows16.h). GPU slots and files always hold GGUF rows.
PACKINGS = ("gguf", "q8_rows16")
Q8_0_BLOCK = 32  # values per Q8_0 block
Q8_0_BYTES = 34  # bytes per Q8_0 block: fp16 scale + 32 int8


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


# ------------------------------------------------------------------------------ row bytes, layout
def q8_0_row_bytes(n_in: int) -> int:
    """Bytes of one Q8_0 row of n_in values (n_in a positive multiple of 32)."""
    if n_in <= 0 or n_in % Q8_0_BLOCK:
        raise ValueError(f"q8_0 rows need a positive multiple of {Q8_0_BLOCK} values, got {n_in}")
    return n_in // Q8_0_BLOCK * Q8_0_BYTES


def row_bytes(fmt: str, n_in: int) -> int:
    """Bytes of one row of n_in inputs in fmt (hm::row_bytes)."""
    _check_format(fmt)
    if fmt == "q8_0":
        return q8_0_row_bytes(n_in)
    if n_in <= 0:
        raise ValueError(f"row length must be positive, got {n_in}")
    return 2 * n_in


def expert_layout(fmt: str, hidden: int, intermediate: int) -> dict:
    """Byte layout of one expert from the native library: format, hidden, intermediate,
    {gate,up,down}_{offset,bytes}, stride and weight_bytes (bytes, ints)."""
    from hybrid_moe._native import native  # lazy: the loaders use this module without _C

    _check_format(fmt)
    return dict(native.expert_layout(fmt, int(hidden), int(intermediate)))


# ------------------------------------------------------------------------------ Q8_0
def _as_float32_cpu(w) -> torch.Tensor:
    if isinstance(w, torch.Tensor):
        return w.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


def quantize_q8_0(w: torch.Tensor | np.ndarray) -> torch.Tensor:
    """GGUF Q8_0 of w [..., n] (float, n % 32 == 0; torch or numpy) -> uint8 CPU tensor
    [..., n / 32 * 34], byte-identical to gguf.quants.quantize(w, Q8_0)."""
    x = _as_float32_cpu(w)
    if x.dim() < 1 or x.shape[-1] % Q8_0_BLOCK or x.shape[-1] == 0:
        raise ValueError(
            f"quantize_q8_0: w must be [..., n] with n a positive multiple of 32, "
            f"got {tuple(x.shape)}"
        )
    lead, n = tuple(x.shape[:-1]), int(x.shape[-1])
    blocks = x.reshape(-1, Q8_0_BLOCK)  # [nb, 32]
    d = blocks.abs().amax(dim=1, keepdim=True) / 127.0  # [nb, 1] float32
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    v = blocks * inv
    a = v.abs()
    fl = a.floor()
    q = torch.copysign(fl + (2.0 * (a - fl)).floor(), v)  # round half away from zero
    out = torch.empty(blocks.shape[0], Q8_0_BYTES, dtype=torch.uint8)
    out[:, :2] = d.to(torch.float16).view(torch.uint8)
    out[:, 2:] = q.to(torch.int8).view(torch.uint8)
    return out.reshape(*lead, n // Q8_0_BLOCK * Q8_0_BYTES)


def dequantize_q8_0(
    blocks: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 [..., n/32*34] GGUF Q8_0 rows -> dtype [..., n] (d * q, exact in float32), on
    blocks' device. The row length n follows from the last dimension."""
    if isinstance(blocks, np.ndarray):
        blocks = torch.from_numpy(np.ascontiguousarray(blocks))
    if blocks.dtype != torch.uint8:
        raise ValueError(f"q8_0 blocks must be torch.uint8, got {blocks.dtype}")
    if blocks.dim() < 1 or blocks.shape[-1] % Q8_0_BYTES:
        raise ValueError(
            f"q8_0 row bytes must be a multiple of {Q8_0_BYTES}, got {tuple(blocks.shape)}"
        )
    b = blocks.reshape(*blocks.shape[:-1], blocks.shape[-1] // Q8_0_BYTES, Q8_0_BYTES)
    d = b[..., :2].contiguous().view(torch.float16).to(torch.float32)  # [..., nb, 1]
    q = b[..., 2:].contiguous().view(torch.int8).to(torch.float32)  # [..., nb, 32]
    return (d * q).reshape(*blocks.shape[:-1], -1).to(dtype)


# ------------------------------------------------------------------------------ rows
def encode_rows(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """Dense w [..., n_in] (any float dtype, any device) -> uint8 CPU [..., row_bytes(fmt, n_in)]:
    bf16 (rounded to nearest even) or GGUF Q8_0."""
    _check_format(fmt)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"w must be a floating torch.Tensor, got {getattr(w, 'dtype', type(w))}")
    if fmt == "q8_0":
        return quantize_q8_0(w)
    b = w.detach().to("cpu", torch.bfloat16).contiguous().view(torch.uint8)
    return b.reshape(*w.shape[:-1], 2 * w.shape[-1])


def decode_rows(b: torch.Tensor, fmt: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of encode_rows: uint8 [..., row_bytes] -> dtype [..., n_in] (exact)."""
    _check_format(fmt)
    if fmt == "q8_0":
        return dequantize_q8_0(b, dtype)
    if b.dtype != torch.uint8 or b.shape[-1] % 2:
        raise ValueError(f"bf16 rows must be uint8 [..., 2 * n_in], got {b.dtype} {tuple(b.shape)}")
    return b.contiguous().view(torch.bfloat16).to(dtype)


# ------------------------------------------------------------------------------ expert packing
_PARTS = ("gate", "up", "down")


def pack_encoded(
    fmt: str,
    hidden: int,
    intermediate: int,
    gate: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    """Already-encoded experts -> uint8 CPU [E, stride] in the native expert layout (padding 0).

    gate, up: bytes of [E, I rows of H inputs]; down: [E, H rows of I inputs], each uint8 with E
    as the first dimension (e.g. [E, I, row_bytes(fmt, H)] or flat [E, I * row_bytes(fmt, H)]).
    """
    lay = expert_layout(fmt, hidden, intermediate)
    n_exp = int(gate.shape[0]) if isinstance(gate, torch.Tensor) and gate.dim() else 0
    packed = torch.zeros(n_exp, int(lay["stride"]), dtype=torch.uint8)
    for name, t in zip(_PARTS, (gate, up, down), strict=True):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() < 1:
            raise ValueError(
                f"{name} must be encoded uint8 bytes [E, ...], got "
                f"{getattr(t, 'dtype', type(t).__name__)}"
            )
        off, nb = int(lay[f"{name}_offset"]), int(lay[f"{name}_bytes"])
        raw = t.detach().to("cpu").contiguous().reshape(t.shape[0], -1)
        if raw.shape != (n_exp, nb):
            raise ValueError(
                f"{name}: expected {n_exp} experts of {nb} bytes ({fmt}, hidden="
                f"{hidden}, intermediate={intermediate}), got {list(raw.shape)}"
            )
        packed[:, off : off + nb] = raw
    return packed


def pack_experts(
    gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, fmt: str
) -> torch.Tensor:
    """Dense gate/up [E, I, H], down [E, H, I] (float, any device) -> uint8 CPU [E, stride]."""
    _check_format(fmt)
    if (
        not all(isinstance(t, torch.Tensor) for t in (gate, up, down))
        or gate.dim() != 3
        or tuple(up.shape) != tuple(gate.shape)
        or tuple(down.shape) != (gate.shape[0], gate.shape[2], gate.shape[1])
    ):
        shapes = [tuple(getattr(t, "shape", ())) for t in (gate, up, down)]
        raise ValueError(
            f"pack_experts: expected gate/up [E, I, H] and down [E, H, I], got {shapes}"
        )
    inter, hidden = int(gate.shape[1]), int(gate.shape[2])
    row_bytes(fmt, hidden), row_bytes(fmt, inter)  # q8_0: ValueError unless multiples of 32
    return pack_encoded(fmt, hidden, inter, *(encode_rows(t, fmt) for t in (gate, up, down)))


def unpack_experts(
    packed: torch.Tensor,
    fmt: str,
    hidden: int,
    intermediate: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 [E, stride] (or one expert [stride]) -> gate [E, I, H], up [E, I, H], down [E, H, I]
    decoded exactly to dtype ([I, H], [I, H], [H, I] for one expert), on the CPU."""
    lay = expert_layout(fmt, hidden, intermediate)
    stride = int(lay["stride"])
    if (
        not isinstance(packed, torch.Tensor)
        or packed.dtype != torch.uint8
        or packed.dim() not in (1, 2)
        or packed.shape[-1] != stride
    ):
        raise ValueError(
            f"packed must be uint8 [E, {stride}] or [{stride}], got "
            f"{getattr(packed, 'dtype', type(packed).__name__)} "
            f"{list(getattr(packed, 'shape', []))}"
        )
    raw = packed.detach().to("cpu")
    lead = tuple(raw.shape[:-1])
    out = []
    for name, rows in (("gate", intermediate), ("up", intermediate), ("down", hidden)):
        off, nb = int(lay[f"{name}_offset"]), int(lay[f"{name}_bytes"])
        out.append(
            decode_rows(raw[..., off : off + nb].reshape(*lead, rows, nb // rows), fmt, dtype)
        )
    return out[0], out[1], out[2]


def repack_experts(
    packed: torch.Tensor, fmt: str, hidden: int, intermediate: int, src: str, dst: str
) -> torch.Tensor:
    """uint8 CPU [E, stride] experts in row packing src -> a new tensor in packing dst (lossless:
    GGUF Q8_0 rows <-> groups of 16 rows, core/q8_rows16.h). q8_rows16 needs fmt q8_0."""
    from hybrid_moe._native import native

    _check_format(fmt)
    for name, p in (("src", src), ("dst", dst)):
        if p not in PACKINGS:
            raise ValueError(f"{name} packing must be one of {PACKINGS}, got {p!r}")
    if "q8_rows16" in (src, dst) and fmt != "q8_0":
        raise ValueError(f"row packing q8_rows16 needs fmt q8_0, got {fmt!r}")
    stride = int(expert_layout(fmt, hidden, intermediate)["stride"])
    if (
        not isinstance(packed, torch.Tensor)
        or packed.dtype != torch.uint8
        or packed.dim() != 2
        or packed.shape[1] != stride
        or packed.device.type != "cpu"
    ):
        raise ValueError(
            f"packed must be a uint8 CPU tensor [E, {stride}], got "
            f"{getattr(packed, 'dtype', type(packed).__name__)} "
            f"{list(getattr(packed, 'shape', []))}"
        )
    src_t = packed.contiguous()
    out = torch.empty_like(src_t)
    native.repack_experts(
        fmt, hidden, intermediate, src, dst, src_t.data_ptr(), out.data_ptr(), int(src_t.shape[0])
    )
    return out
