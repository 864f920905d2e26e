"""ExpertWeights: the routed experts of one MoE layer, as every loader returns them.

Shapes follow GGUF's expert tensors `[n_expert, n_out, n_in]` (csrc/core/weight_format.h), which
is also torch's nn.Linear orientation (`weight[out, in]`), so no transpose is ever needed:

    format 'bf16' / 'f32' (dense):   gate [E, I, H], up [E, I, H], down [E, H, I]
                                      dtype torch.bfloat16 / torch.float32
    format 'q8_0' (GGUF blocks):      gate [E, I, H/32*34], up likewise, down [E, H, I/32*34]
                                      dtype torch.uint8: raw GGUF Q8_0 blocks, each 34 bytes =
                                      fp16 scale d + 32 int8 q, value = d * q, along n_in.

E = n_expert, H = hidden size, I = expert intermediate size. Quantized data stays quantized: the
kernels consume the Q8_0 blocks as they are; `dequantize()` exists for references and tests.
'f32' exists because Hugging Face models and checkpoints may be float32; the kernels take 'bf16'
and 'q8_0' (weight_format.h), so the runtime stores such weights with `to_bf16()`.

The tensors may be views of a model's parameters or of a memory-mapped file: copy them
(`.clone()`, or the runtime's host store) before the source goes away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Q8_0 constants and helpers live in hybrid_moe.formats; re-exported here for the loaders' API.
from hybrid_moe.formats import Q8_0_BLOCK, Q8_0_BYTES, dequantize_q8_0, q8_0_row_bytes

__all__ = [
    "FORMATS",
    "Q8_0_BLOCK",
    "Q8_0_BYTES",
    "ExpertWeights",
    "dequantize_q8_0",
    "load_state_dict_experts",
    "q8_0_row_bytes",
]

FORMATS = ("bf16", "f32", "q8_0")
_DENSE_DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


@dataclass
class ExpertWeights:
    """Routed expert weights of one MoE layer (see the module docstring for shapes and formats).

    n_expert, hidden and intermediate are derived from the tensors and checked on construction;
    a wrong shape, dtype or format raises ValueError naming the tensor and the expected value.
    """

    format: str
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    n_expert: int = field(init=False)
    hidden: int = field(init=False)
    intermediate: int = field(init=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"ExpertWeights format must be one of {FORMATS}, got {self.format!r}")
        for name in ("gate", "up", "down"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(
                    f"ExpertWeights.{name} must be a 3-D torch.Tensor [E, n_out, n_in]"
                    f", got {type(t).__name__} {getattr(t, 'shape', '')}"
                )
            want = torch.uint8 if self.format == "q8_0" else _DENSE_DTYPES[self.format]
            if t.dtype != want:
                raise ValueError(
                    f"ExpertWeights.{name} of format {self.format} must be {want}, got {t.dtype}"
                )
        e, i = self.gate.shape[:2]
        h = self.down.shape[1]
        if self.format == "q8_0":
            gate_in = self.gate.shape[2] // Q8_0_BYTES * Q8_0_BLOCK
            down_in = self.down.shape[2] // Q8_0_BYTES * Q8_0_BLOCK
            want_gate = (e, i, q8_0_row_bytes(h))
            want_down = (e, h, q8_0_row_bytes(i))
            if gate_in != h or down_in != i:
                raise ValueError(
                    f"q8_0 gate [E, I, H/32*34] and down [E, H, I/32*34] disagree: "
                    f"gate {list(self.gate.shape)}, down {list(self.down.shape)}"
                )
        else:
            want_gate, want_down = (e, i, h), (e, h, i)
        if tuple(self.up.shape) != tuple(self.gate.shape) or tuple(self.gate.shape) != want_gate:
            raise ValueError(
                f"ExpertWeights.gate and .up must both be {list(want_gate)} "
                f"(from down {list(self.down.shape)}), got gate "
                f"{list(self.gate.shape)}, up {list(self.up.shape)}"
            )
        if tuple(self.down.shape) != want_down:
            raise ValueError(
                f"ExpertWeights.down must be {list(want_down)}, got {list(self.down.shape)}"
            )
        if min(e, i, h) < 1:
            raise ValueError(f"ExpertWeights needs E, I, H >= 1, got E={e} I={i} H={h}")
        self.n_expert, self.hidden, self.intermediate = int(e), int(h), int(i)

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def dense(cls, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        """From dense [E,I,H], [E,I,H], [E,H,I] tensors; bf16 stays bf16, others become float32."""
        fmt = "bf16" if gate.dtype == torch.bfloat16 else "f32"
        dt = _DENSE_DTYPES[fmt]
        return cls(fmt, gate.to(dt), up.to(dt), down.to(dt))

    @classmethod
    def from_fused(cls, gate_up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        """From transformers' fused layout: gate_up_proj [E, 2I, H] (gate rows first, then up,
        as `linear(x, gate_up_proj[e]).chunk(2, -1)` splits it) and down_proj [E, H, I].
        gate and up are views of gate_up when its dtype is kept (no copy)."""
        if gate_up.dim() != 3 or down.dim() != 3:
            raise ValueError(
                f"gate_up_proj must be [E, 2I, H] and down_proj [E, H, I], got "
                f"{list(gate_up.shape)} and {list(down.shape)}"
            )
        e, h, i = down.shape
        if tuple(gate_up.shape) != (e, 2 * i, h):
            raise ValueError(
                f"gate_up_proj must be [E, 2I, H] = {[e, 2 * i, h]} to match "
                f"down_proj {list(down.shape)}, got {list(gate_up.shape)}"
            )
        return cls.dense(gate_up[:, :i], gate_up[:, i:], down)

    @classmethod
    def stack(
        cls,
        gates: Sequence[torch.Tensor],
        ups: Sequence[torch.Tensor],
        downs: Sequence[torch.Tensor],
    ) -> ExpertWeights:
        """From per-expert 2-D matrices gate [I,H], up [I,H], down [H,I] (copies into [E, ...])."""
        n = len(gates)
        if n == 0 or len(ups) != n or len(downs) != n:
            raise ValueError(
                f"need the same positive number of gate, up and down matrices, got "
                f"{len(gates)}, {len(ups)}, {len(downs)}"
            )
        for name, mats in (("gate", gates), ("up", ups), ("down", downs)):
            shapes = {tuple(m.shape) for m in mats}
            if len(shapes) != 1:
                raise ValueError(f"per-expert {name} matrices differ in shape: {sorted(shapes)}")
        if gates[0].dtype == torch.uint8:
            return cls(
                "q8_0", torch.stack(list(gates)), torch.stack(list(ups)), torch.stack(list(downs))
            )
        return cls.dense(torch.stack(list(gates)), torch.stack(list(ups)), torch.stack(list(downs)))

    # ---- queries and conversions --------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.gate.device

    def expert_bytes(self) -> int:
        """Bytes of one expert's weights in this format (gate + up + down, no padding)."""
        per = sum(t[0].numel() * t.element_size() for t in (self.gate, self.up, self.down))
        return int(per)

    def dequantize(
        self, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense (gate [E,I,H], up [E,I,H], down [E,H,I]) in dtype; Q8_0 decoded as d * q."""
        if self.format == "q8_0":
            return (
                dequantize_q8_0(self.gate, dtype),
                dequantize_q8_0(self.up, dtype),
                dequantize_q8_0(self.down, dtype),
            )
        return self.gate.to(dtype), self.up.to(dtype), self.down.to(dtype)

    def to_bf16(self) -> ExpertWeights:
        """'f32' -> 'bf16' (rounded); 'bf16' and 'q8_0' are returned unchanged."""
        if self.format != "f32":
            return self
        return ExpertWeights(
            "bf16",
            self.gate.to(torch.bfloat16),
            self.up.to(torch.bfloat16),
            self.down.to(torch.bfloat16),
        )

    def clone(self, device: torch.device | str | None = None) -> ExpertWeights:
        """A copy that owns its memory (optionally on another device)."""
        dev = self.device if device is None else torch.device(device)
        return ExpertWeights(
            self.format,
            *(t.to(dev, copy=True).contiguous() for t in (self.gate, self.up, self.down)),
        )

    def __repr__(self) -> str:
        return (
            f"ExpertWeights(format={self.format!r}, n_expert={self.n_expert}, "
            f"hidden={self.hidden}, intermediate={self.intermediate}, device={self.device})"
        )


def load_state_dict_experts(
    state_dict: dict[str, torch.Tensor],
    layers: list[int] | None = None,
    dtype: torch.dtype | None = None,
    n_expert: int | None = None,
) -> dict[int, ExpertWeights]:
    """{layer index: ExpertWeights} from torch tensors named as in a Hugging Face state dict
    (model.state_dict() or torch.load of a checkpoint; names as in loaders/names.py). Tensors are
    used as they are (views, no copy) unless `dtype` converts them."""
    from hybrid_moe.loaders.names import ExpertIndex  # names.py imports this module

    index = ExpertIndex(state_dict.keys(), "state_dict")

    def read(name: str) -> torch.Tensor:
        return state_dict[name]

    return {
        n: index.assemble(n, read, dtype, n_expert)
        for n in (index.moe_layers if layers is None else layers)
    }
