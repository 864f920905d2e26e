"""ReferenceExperts: a plain torch expert executor, the correctness reference for the runtime.

    out[t] = sum_j w[t, j] * down_e( silu(gate_e x_t) * up_e x_t ),   e = topk_ids[t, j]

computed in float32 (weights decoded to float32: bf16 exactly, Q8_0 as d * q), output cast to the
input's dtype. Same call signature as the runtime's HybridMoELayer (DESIGN.md section 7):
forward(hidden [T, H], topk_ids [T, k] int, topk_weights [T, k] float) -> [T, H].
It loops over the experts that were hit, gathering their tokens: slow, simple, obviously right.
reference_moe() is that computation as a plain function on dense tensors, the one float32
reference that cpu_experts.reference_layer and gpu.reference_moe call too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_moe.loaders.tensors import ExpertWeights


def reference_moe(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    """THE float32 reference of routed experts (every other reference in the package calls it).

    x [T, H] (any float dtype); topk_ids [T, k] int in [0, E); topk_weights [T, k] float;
    gate, up [E, I, H] and down [E, H, I] dense (any float dtype; cast to float32 per expert).
    Returns float32 [T, H] on x's device: out[t] = sum_j w[t, j] * down_e(silu(gate_e x_t) *
    up_e x_t), e = topk_ids[t, j]; ids and weights are moved to x's device. No input checks:
    callers validate (ReferenceExperts._check_inputs)."""
    xf = x.to(torch.float32)
    out = torch.zeros(xf.shape[0], down.shape[1], dtype=torch.float32, device=xf.device)
    ids = topk_ids.to(xf.device, torch.int64)
    w = topk_weights.to(xf.device, torch.float32)
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        xe = xf[tok]  # [n, H]
        g, u, d = (t[e].to(xf.device, torch.float32) for t in (gate, up, down))
        act = F.silu(xe @ g.T) * (xe @ u.T)  # [n, I]
        out.index_add_(0, tok, (act @ d.T) * w[tok, slot, None])
    return out


class ReferenceExperts(nn.Module):
    """Holds its own float32 copy of the experts (buffers, so .to(device) moves them)."""

    def __init__(self, weights: ExpertWeights):
        super().__init__()
        if not isinstance(weights, ExpertWeights):
            raise TypeError(f"ReferenceExperts needs ExpertWeights, got {type(weights).__name__}")
        gate, up, down = weights.dequantize(torch.float32)
        # [E, I, H], [E, I, H], [E, H, I]; contiguous copies so the source can be freed.
        self.register_buffer("gate", gate.contiguous().clone(), persistent=False)
        self.register_buffer("up", up.contiguous().clone(), persistent=False)
        self.register_buffer("down", down.contiguous().clone(), persistent=False)
        self.n_expert, self.hidden, self.intermediate = (
            weights.n_expert,
            weights.hidden,
            weights.intermediate,
        )
        self.source_format = weights.format

    def forward(
        self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        _check_inputs(hidden, topk_ids, topk_weights, self.hidden, self.n_expert)
        out = reference_moe(hidden, topk_ids, topk_weights, self.gate, self.up, self.down)
        return out.to(hidden.dtype)

    def extra_repr(self) -> str:
        return (
            f"n_expert={self.n_expert}, hidden={self.hidden}, "
            f"intermediate={self.intermediate}, source_format={self.source_format}"
        )


def _check_inputs(
    hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, h: int, n_expert: int
) -> None:
    """ValueError naming the argument and the expected value for any bad input."""
    if hidden.dim() != 2 or hidden.shape[1] != h:
        raise ValueError(f"hidden must be [T, {h}], got {list(hidden.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating tensor, got {hidden.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"topk_ids must be [T={hidden.shape[0]}, k], got {list(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(
            f"topk_weights must have topk_ids' shape {list(topk_ids.shape)}, got "
            f"{list(topk_weights.shape)}"
        )
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= n_expert):
        raise ValueError(
            f"topk_ids must lie in [0, {n_expert}), got min {int(topk_ids.min())} "
            f"max {int(topk_ids.max())}"
        )
    for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if t.device != hidden.device:
            raise ValueError(f"{name} must be on hidden's device {hidden.device}, got {t.device}")
