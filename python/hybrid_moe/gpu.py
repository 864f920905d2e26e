"""GPU side (issue 5): pinned expert store, device slab, mover, and the expert kernels.

The native code (csrc/cuda) works on raw pointers and a cudaStream_t; this module validates torch
tensors and passes their data_ptr() and torch.cuda.current_stream().cuda_stream. Shapes: x is
bf16 [T, H]; a plan is three 1-D tensors of one length P: tokens (int, in [0, T)), slots (int, in
[0, n_slots)) and weights (float); out is [T, H] float32 or bfloat16 and is ADDED to.
Expert bytes follow core/weight_format.h: formats.pack_experts() (alias gpu.pack_experts) builds
them from float weights.
Without a CUDA build every GPU entry raises RuntimeError("... built without CUDA ...").
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from hybrid_moe import formats
from hybrid_moe import reference as _reference
from hybrid_moe._native import native
from hybrid_moe.formats import FORMATS  # noqa: F401  (kept: gpu.FORMATS)


def gpu_built() -> bool:
    return bool(getattr(native, "gpu_built", False))


def _require_gpu() -> None:
    if not gpu_built():
        raise RuntimeError("hybrid_moe was built without CUDA: the GPU side is unavailable")


# ------------------------------------------------------------------ formats (hybrid_moe.formats)
# Thin aliases kept for callers of gpu.*: the one implementation lives in hybrid_moe.formats.
expert_layout = formats.expert_layout  # (fmt, hidden, intermediate) -> layout dict
quantize_q8_0 = formats.quantize_q8_0  # [..., n] float -> uint8 [..., n / 32 * 34] (GGUF exact)
dequantize_q8_0 = formats.dequantize_q8_0  # uint8 [..., n / 32 * 34] -> float32 [..., n]
pack_experts = formats.pack_experts  # gate/up [E, I, H], down [E, H, I] -> uint8 [E, stride]
unpack_expert = formats.unpack_experts  # uint8 [stride] -> float32 (gate, up, down) of one expert


def reference_moe(x: torch.Tensor, tokens, weights, experts_f32) -> torch.Tensor:
    """float32 reference in the kernels' pair form: out[t] = sum_p w_p * expert_p(x_t),
    t = tokens[p].

    experts_f32: list (one per pair) of (gate [I, H], up [I, H], down [H, I]) tensors on x's
    device; equal tuples (same tensor objects) are stacked once. Calls reference.reference_moe.
    """
    index: dict[tuple[int, int, int], int] = {}
    pair_expert = [index.setdefault(tuple(map(id, gud)), len(index)) for gud in experts_f32]
    uniq = {v: gud for gud, v in zip(experts_f32, pair_expert, strict=True)}
    gate, up, down = (torch.stack([uniq[i][j] for i in range(len(uniq))]) for j in range(3))
    tok = torch.as_tensor(tokens).reshape(-1).to(x.device, torch.int64)
    ids = torch.tensor(pair_expert, dtype=torch.int64, device=x.device)[:, None]  # [P, 1]
    w = torch.as_tensor(weights).reshape(-1, 1).to(x.device, torch.float32)  # [P, 1]
    per_pair = _reference.reference_moe(x[tok], ids, w, gate, up, down)  # [P, H]
    return torch.zeros(x.shape[0], x.shape[1], device=x.device).index_add_(0, tok, per_pair)


# ------------------------------------------------------------------ store, slab, mover
class PinnedExpertStore:
    """Every expert as one contiguous `stride`-byte range of page-locked host memory."""

    def __init__(self, fmt: str, hidden: int, intermediate: int, n_experts: int):
        _require_gpu()
        self.native = native.GpuPinnedStore(fmt, int(hidden), int(intermediate), int(n_experts))
        self.fmt, self.hidden, self.intermediate = fmt, int(hidden), int(intermediate)
        self.layout = dict(self.native.layout)

    @classmethod
    def from_tensors(cls, packed: torch.Tensor, fmt: str, hidden: int, intermediate: int):
        """packed: uint8 CPU [E, stride] (pack_experts()); copied once into pinned memory."""
        lay = expert_layout(fmt, hidden, intermediate)
        if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != lay["stride"]:
            raise ValueError(
                f"packed must be uint8 [E, {lay['stride']}], got {packed.dtype} "
                f"{tuple(packed.shape)}"
            )
        if packed.device.type != "cpu":
            raise ValueError(f"packed must be a CPU tensor, got device {packed.device}")
        store = cls(fmt, hidden, intermediate, packed.shape[0])
        packed = packed.contiguous()
        for e in range(packed.shape[0]):
            store.native.fill_expert(e, packed[e].data_ptr(), lay["stride"], 0)
        return store

    @classmethod
    def from_file(
        cls, path: str, fmt: str, hidden: int, intermediate: int, n_experts: int, offset: int = 0
    ):
        """Experts stored back to back (stride bytes each) in a file, read with pread()."""
        store = cls(fmt, hidden, intermediate, n_experts)
        store.native.load_file(str(path), int(offset), 0, int(n_experts))
        return store

    @property
    def n_experts(self) -> int:
        return int(self.native.n_experts)

    def expert_bytes(self, e: int) -> torch.Tensor:
        """A uint8 CPU tensor VIEW of expert e's pinned bytes (valid while the store lives)."""
        ptr = self.native.expert_ptr(int(e))
        buf = (ctypes.c_uint8 * self.layout["stride"]).from_address(ptr)
        return torch.frombuffer(buf, dtype=torch.uint8)


class DeviceSlab:
    """Equal slots of device memory, one expert each; sized by n_slots, bytes or a fraction."""

    def __init__(
        self,
        fmt: str,
        hidden: int,
        intermediate: int,
        *,
        n_slots: int | None = None,
        budget_bytes: int | None = None,
        fraction: float | None = None,
        total_experts: int | None = None,
        device: int = 0,
    ):
        _require_gpu()
        given = [a is not None for a in (n_slots, budget_bytes, fraction)]
        if sum(given) != 1:
            raise ValueError("DeviceSlab: give exactly one of n_slots, budget_bytes, fraction")
        if budget_bytes is not None:
            n_slots = native.GpuDeviceSlab.slots_for_budget(
                fmt, hidden, intermediate, int(budget_bytes)
            )
        elif fraction is not None:
            if total_experts is None:
                raise ValueError("DeviceSlab: fraction needs total_experts")
            n_slots = native.GpuDeviceSlab.slots_for_fraction(int(total_experts), float(fraction))
        self.native = native.GpuDeviceSlab(
            fmt, int(hidden), int(intermediate), int(n_slots), int(device)
        )
        self.fmt, self.hidden, self.intermediate = fmt, int(hidden), int(intermediate)
        self.layout = dict(self.native.layout)
        self.device = torch.device("cuda", int(device))

    @property
    def n_slots(self) -> int:
        return int(self.native.n_slots)

    def read_slot(self, s: int) -> torch.Tensor:
        out = torch.empty(self.layout["stride"], dtype=torch.uint8)
        self.native.read_slot(int(s), out.data_ptr())
        return out


class Mover:
    """The copy thread: request_fetch / poll_completions / acquire / release (see cuda/mover.h)."""

    def __init__(
        self,
        store: PinnedExpertStore,
        slab: DeviceSlab,
        max_in_flight: int = 4,
        max_pending_prefetch: int = 64,
    ):
        _require_gpu()
        self.native = native.GpuMover(
            store.native, slab.native, int(max_in_flight), int(max_pending_prefetch)
        )
        self.store, self.slab = store, slab

    def request_fetch(self, expert: int, slot: int, prefetch: bool = False, generation: int = 0):
        self.native.request_fetch(int(expert), int(slot), bool(prefetch), int(generation))

    def __getattr__(self, name):  # set_generation, poll_completions, acquire, release, ...
        return getattr(self.native, name)


# ------------------------------------------------------------------ kernels
def _check_plan(slab: DeviceSlab, x: torch.Tensor, tokens, slots, weights):
    if not isinstance(x, torch.Tensor) or x.device.type != "cuda" or x.dtype != torch.bfloat16:
        raise ValueError(
            f"x must be a CUDA bfloat16 tensor, got {getattr(x, 'dtype', type(x))} "
            f"on {getattr(x, 'device', None)}"
        )
    if x.dim() != 2 or x.shape[1] != slab.hidden:
        raise ValueError(f"x must be [T, {slab.hidden}], got {tuple(x.shape)}")
    tokens = torch.as_tensor(tokens).reshape(-1).to("cpu", torch.int64)
    slots = torch.as_tensor(slots).reshape(-1).to("cpu", torch.int64)
    weights = torch.as_tensor(weights).reshape(-1).to("cpu", torch.float32)
    if not (tokens.numel() == slots.numel() == weights.numel()) or tokens.numel() == 0:
        raise ValueError(
            f"tokens, slots, weights must be 1-D of one non-zero length, got "
            f"{tokens.numel()}, {slots.numel()}, {weights.numel()}"
        )
    n_tok = x.shape[0]
    if int(tokens.min()) < 0 or int(tokens.max()) >= n_tok:
        raise ValueError(
            f"tokens must be in [0, {n_tok}), got range [{int(tokens.min())}, {int(tokens.max())}]"
        )
    if int(slots.min()) < 0 or int(slots.max()) >= slab.n_slots:
        raise ValueError(
            f"slots must be in [0, {slab.n_slots}), got range "
            f"[{int(slots.min())}, {int(slots.max())}]"
        )
    return x.contiguous(), tokens, slots, weights


def _check_out(out, x: torch.Tensor, hidden: int) -> torch.Tensor:
    if out is None:
        return torch.zeros(x.shape[0], hidden, dtype=torch.float32, device=x.device)
    if (
        out.dtype not in (torch.float32, torch.bfloat16)
        or out.device != x.device
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out must be a contiguous float32/bfloat16 tensor on {x.device}, got "
            f"{out.dtype} on {out.device}"
        )
    if tuple(out.shape) != (x.shape[0], hidden):
        raise ValueError(f"out must be [{x.shape[0]}, {hidden}], got {tuple(out.shape)}")
    return out


def _dtype_name(t: torch.Tensor) -> str:
    return "float32" if t.dtype == torch.float32 else "bfloat16"


def device_plan(tokens, slots, weights, n_tokens: int, device) -> dict[str, torch.Tensor]:
    """Sort pairs by token and build the CSR token_ptr; all int32/float32 tensors on device."""
    order = torch.argsort(tokens, stable=True)
    t_sorted = tokens[order]
    counts = torch.bincount(t_sorted, minlength=n_tokens)
    ptr = torch.zeros(n_tokens + 1, dtype=torch.int32)
    ptr[1:] = torch.cumsum(counts, 0)
    return {
        "token_ptr": ptr.to(device),
        "pair_token": t_sorted.to(torch.int32).to(device),
        "pair_slot": slots[order].to(torch.int32).to(device),
        "pair_weight": weights[order].to(device),
    }


def launch_decode_raw(
    slab: DeviceSlab,
    plan: dict[str, torch.Tensor],
    x: torch.Tensor,
    h: torch.Tensor,
    out: torch.Tensor,
    max_pairs: int,
) -> None:
    """No-validation launch on the current stream (benchmarks, graph capture)."""
    native.gpu_decode(
        slab.native,
        plan["token_ptr"].data_ptr(),
        plan["pair_token"].data_ptr(),
        plan["pair_slot"].data_ptr(),
        plan["pair_weight"].data_ptr(),
        x.shape[0],
        int(max_pairs),
        x.data_ptr(),
        h.data_ptr(),
        out.data_ptr(),
        _dtype_name(out),
        torch.cuda.current_stream(x.device).cuda_stream,
    )


def run_decode(slab: DeviceSlab, x: torch.Tensor, tokens, slots, weights, out=None) -> torch.Tensor:
    """Decode kernels: out[T, H] += sum over pairs (see module doc). Returns out."""
    _require_gpu()
    x, tokens, slots, weights = _check_plan(slab, x, tokens, slots, weights)
    out = _check_out(out, x, slab.hidden)
    if tokens.numel() > 65535 or x.shape[0] > 65535:
        raise ValueError("run_decode: at most 65535 pairs and tokens")
    plan = device_plan(tokens, slots, weights, x.shape[0], x.device)
    h = torch.empty(tokens.numel(), slab.intermediate, dtype=torch.float32, device=x.device)
    launch_decode_raw(slab, plan, x, h, out, tokens.numel())
    return out


_PREFILL: dict[int, Any] = {}


def run_prefill(
    slab: DeviceSlab, x: torch.Tensor, tokens, slots, weights, out=None
) -> torch.Tensor:
    """Tensor-core grouped path for many tokens; same contract as run_decode."""
    _require_gpu()
    x, tokens, slots, weights = _check_plan(slab, x, tokens, slots, weights)
    out = _check_out(out, x, slab.hidden)
    runner = _PREFILL.setdefault(x.device.index or 0, native.GpuPrefillRunner())
    runner.run(
        slab.native,
        tokens.to(torch.int32).numpy(),
        slots.to(torch.int32).numpy(),
        weights.numpy(),
        x.shape[0],
        x.data_ptr(),
        out.data_ptr(),
        _dtype_name(out),
        torch.cuda.current_stream(x.device).cuda_stream,
    )
    return out


def add_partials(out: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """out[T, H] (float32 or bfloat16, CUDA) += partial[T, H] (float32, same device)."""
    _require_gpu()
    if partial.dtype != torch.float32 or partial.device != out.device or partial.shape != out.shape:
        raise ValueError(
            f"partial must be float32 {tuple(out.shape)} on {out.device}, got "
            f"{partial.dtype} {tuple(partial.shape)} on {partial.device}"
        )
    if (
        out.device.type != "cuda"
        or out.dtype not in (torch.float32, torch.bfloat16)
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out must be a contiguous CUDA float32/bfloat16 tensor, got {out.dtype} on "
            f"{out.device}"
        )
    partial = partial.contiguous()
    native.gpu_add_partials(
        out.data_ptr(),
        _dtype_name(out),
        partial.data_ptr(),
        out.numel(),
        torch.cuda.current_stream(out.device).cuda_stream,
    )
    return out
