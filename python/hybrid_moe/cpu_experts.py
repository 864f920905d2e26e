"""CPU expert kernels from Python: expert stores in the project's byte layout, one MoE layer on the
CPU, and aliases of the Q8_0 helpers (hybrid_moe.formats) and float32 reference (reference.py).

    store = CpuExpertStore.from_tensors(gate[E, I, H], up[E, I, H], down[E, H, I], fmt="q8_0")
    out = run_layer(store, x[T, H], topk_ids[T, k], topk_weights[T, k])   # -> fp32 [T, H]

x is float32 on the CPU (bf16 is converted). The ISA (generic | avx2 | avx512 | amx) is chosen at
run time by CPUID; HYBRID_MOE_CPU_ISA or hybrid_moe.set_cpu_isa caps it, `isa=` picks one per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hybrid_moe import formats
from hybrid_moe._native import native
from hybrid_moe.formats import FORMATS, PACKINGS
from hybrid_moe.reference import reference_moe

ISAS = ("generic", "avx2", "avx512", "amx")
# Thin aliases kept for callers of cpu_experts.*: the one implementation is in hybrid_moe.formats.
quantize_q8_0 = formats.quantize_q8_0  # [..., n] float -> uint8 torch [..., n / 32 * 34]
dequantize_q8_0 = formats.dequantize_q8_0  # uint8 [..., n / 32 * 34] -> float32 [..., n]


def _check_weight(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (float32/bf16/fp16), got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")


@dataclass
class CpuExpertStore:
    """E experts in the one-contiguous-range layout (core/weight_format.h), in one uint8 tensor.

    data: uint8 [E, stride]; expert e's bytes start at data[e] (256-byte aligned within the buffer).
    packing: the rows' host packing, "gguf" or (q8_0 only) "q8_rows16" (groups of 16 rows that
    the CPU kernels read with fewer instructions per byte; see with_packing).
    """

    fmt: str
    hidden: int
    intermediate: int
    data: torch.Tensor
    layout: dict
    packing: str = "gguf"
    _ptr_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_experts(self) -> int:
        return int(self.data.shape[0])

    def expert_ptrs(self) -> list[int]:
        base, stride = self.data.data_ptr(), int(self.layout["stride"])
        return [base + e * stride for e in range(self.n_experts)]

    def expert_ptr_array(self) -> np.ndarray:
        """expert_ptrs() as a uint64 array, cached while data stays the same tensor: the native
        layer call reads it in place (a list of E ints is converted on every call)."""
        key = (self.data.data_ptr(), int(self.layout["stride"]), self.n_experts)
        if self._ptr_cache is None or self._ptr_cache[0] != key:
            arr = np.array(self.expert_ptrs(), dtype=np.uint64)
            arr.flags.writeable = False  # shared by every call: nobody may edit an address
            self._ptr_cache = (key, arr)
        return self._ptr_cache[1]

    @classmethod
    def from_tensors(
        cls, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, fmt: str = "bf16"
    ) -> CpuExpertStore:
        """gate, up: [E, I, H]; down: [E, H, I] (float32/bf16/fp16, CPU) -> store in fmt."""
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        if not isinstance(gate, torch.Tensor) or gate.dim() != 3:
            raise ValueError("gate must be a 3-D torch.Tensor [E, I, H]")
        E, I, H = (int(s) for s in gate.shape)
        _check_weight("gate", gate, (E, I, H))
        _check_weight("up", up, (E, I, H))
        _check_weight("down", down, (E, H, I))
        if fmt == "q8_0" and (H % 32 or I % 32):
            raise ValueError(f"q8_0 needs H and I to be multiples of 32, got H={H}, I={I}")
        packed = formats.pack_experts(gate, up, down, fmt)
        return cls(fmt, H, I, packed, formats.expert_layout(fmt, H, I))

    def with_packing(self, packing: str) -> CpuExpertStore:
        """The same experts with rows in `packing` ("gguf" or, for q8_0, "q8_rows16"); a new
        store (self is returned when the packing is already that)."""
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
        if packing == self.packing:
            return self
        data = formats.repack_experts(
            self.data, self.fmt, self.hidden, self.intermediate, self.packing, packing
        )
        return CpuExpertStore(self.fmt, self.hidden, self.intermediate, data, self.layout, packing)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weights as the kernel sees them, float32: gate, up [E, I, H], down [E, H, I]."""
        gguf = self.with_packing("gguf")
        return formats.unpack_experts(gguf.data, self.fmt, self.hidden, self.intermediate)


def _check_routing(x, topk_ids, topk_weights, n_experts: int, hidden: int):
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != hidden:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor [T, {hidden}], got {got}")
    if x.device.type != "cpu":
        raise ValueError(f"x must be on the CPU, got device {x.device}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"x must be float32 or bfloat16, got {x.dtype}")
    T = int(x.shape[0])
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2 or topk_ids.shape[0] != T:
        raise ValueError(f"topk_ids must be a tensor [T={T}, k]")
    if topk_ids.dtype not in (torch.int32, torch.int64) or topk_ids.device.type != "cpu":
        raise ValueError(
            f"topk_ids must be int32/int64 on the CPU, got {topk_ids.dtype} on {topk_ids.device}"
        )
    if not isinstance(topk_weights, torch.Tensor) or tuple(topk_weights.shape) != tuple(
        topk_ids.shape
    ):
        raise ValueError(f"topk_weights must be a tensor of shape {list(topk_ids.shape)}")
    if not topk_weights.is_floating_point() or topk_weights.device.type != "cpu":
        raise ValueError(
            f"topk_weights must be floating on the CPU, got {topk_weights.dtype} on "
            f"{topk_weights.device}"
        )
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= n_experts):
        raise ValueError(
            f"topk_ids must be in [0, {n_experts}), got range "
            f"[{int(topk_ids.min())}, {int(topk_ids.max())}]"
        )
    if not bool(torch.isfinite(topk_weights).all()):
        raise ValueError("topk_weights must be finite")


def run_layer(
    store: CpuExpertStore,
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    threads: int | None = None,
    isa: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[t] (+)= sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]) on the CPU.

    x: [T, H] float32 or bf16 (CPU); topk_ids: int [T, k]; topk_weights: float [T, k].
    threads: pool size (None: HYBRID_MOE_THREADS or the physical cores). isa: None (the run-time
    choice) or 'generic' | 'avx2' | 'avx512' | 'amx'. out: optional fp32 [T, H] to accumulate into;
    otherwise a new zero tensor. Returns out (fp32 [T, H]).
    """
    if not isinstance(store, CpuExpertStore):
        raise TypeError(f"store must be a CpuExpertStore, got {type(store).__name__}")
    _check_routing(x, topk_ids, topk_weights, store.n_experts, store.hidden)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if isa is not None and isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS} or None, got {isa!r}")
    T, k = int(topk_ids.shape[0]), int(topk_ids.shape[1])
    xf = x.to(torch.float32).contiguous()
    if out is None:
        out = torch.zeros(T, store.hidden, dtype=torch.float32)
    elif (
        out.dtype != torch.float32
        or tuple(out.shape) != (T, store.hidden)
        or out.device.type != "cpu"
    ):
        raise ValueError(f"out must be float32 [{T}, {store.hidden}] on the CPU")
    elif not out.is_contiguous():
        raise ValueError("out must be contiguous")
    tok = np.repeat(np.arange(T, dtype=np.int32), k)
    ids = topk_ids.to(torch.int32).reshape(-1).numpy()
    w = topk_weights.to(torch.float32).reshape(-1).numpy()
    native.cpu_moe_layer(
        store.fmt,
        store.hidden,
        store.intermediate,
        store.expert_ptr_array(),
        xf.data_ptr(),
        T,
        tok,
        ids,
        w,
        out.data_ptr(),
        threads or 0,
        isa or "",
        store.packing,
    )
    return out


def reference_layer(gate, up, down, x, topk_ids, topk_weights) -> torch.Tensor:
    """float32 torch reference: gate, up [E, I, H], down [E, H, I]; returns [T, H].
    Argument order kept for its callers; the computation is reference.reference_moe."""
    return reference_moe(x, topk_ids, topk_weights, gate, up, down)


def available_isas() -> list[str]:
    """The variants this machine and build can run, ascending (each test runs all of them)."""
    return [str(name) for name in native.runnable_cpu_isas()]
