"""HybridMoELayer: one MoE layer's routed experts run by a shared Runtime (DESIGN.md section 7).

    layer = HybridMoELayer(runtime, layer_idx, weights, top_k=8, next_router=None)
    out = layer(hidden [T, H], topk_ids [T, k], topk_weights [T, k])   # -> [T, H], hidden's dtype

Construction copies `weights` (ExpertWeights: 'bf16' or 'q8_0' kept as they are, 'f32' rounded to
bf16) into the runtime's host store; the layer keeps no reference to them, so the caller may free
the originals. forward() checks every argument (shape, dtype, device, id range on CPU tensors) and
raises ValueError naming it. On CUDA tensors ids are range-checked on the host inside the stream;
a bad id makes that step's output wrong and the next call raises RuntimeError (Runtime docstring).

next_router (optional): layer l + 1's router, a callable hidden [T, H] -> logits [T, E] or its
weight [E, H]; its top-k on THIS layer's input predicts layer l + 1's experts, which the value
policy prefetches while this layer runs (DESIGN.md section 5). patch() wires it. In GPU decode the
logits themselves go to the runtime (its planner takes the top k on the host), so the hint costs
the router's GEMV and no top-k / cast kernels between layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hybrid_moe import formats
from hybrid_moe.loaders.tensors import ExpertWeights
from hybrid_moe.runtime import Runtime

_HIDDEN_DTYPES = (torch.bfloat16, torch.float32, torch.float16)


def pack_expert_weights(weights: ExpertWeights) -> tuple[str, torch.Tensor]:
    """ExpertWeights -> (format, uint8 [E, stride]) in the one-contiguous-range expert layout
    (csrc/core/weight_format.h), by formats.pack_encoded. 'f32' is rounded to 'bf16'; Q8_0
    blocks are copied as they are (never re-quantized)."""
    w = weights.to_bf16()
    raw = [
        getattr(w, n).detach().to("cpu").contiguous().view(torch.uint8)  # bf16: 2 B/value
        for n in ("gate", "up", "down")
    ]
    return w.format, formats.pack_encoded(w.format, w.hidden, w.intermediate, *raw)


class HybridMoELayer(nn.Module):
    """The routed experts of one MoE layer, run on the CPU and the GPU cache by `runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        layer_idx: int,
        weights: ExpertWeights,
        *,
        top_k: int,
        next_router: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor | None = None,
    ):
        super().__init__()
        if not isinstance(runtime, Runtime):
            raise TypeError(f"runtime must be a hybrid_moe.Runtime, got {type(runtime).__name__}")
        if not isinstance(weights, ExpertWeights):
            raise TypeError(
                f"weights must be hybrid_moe.loaders.ExpertWeights, got {type(weights).__name__}"
            )
        if (
            isinstance(top_k, bool)
            or not isinstance(top_k, int)
            or not 1 <= top_k <= weights.n_expert
        ):
            raise ValueError(
                f"top_k must be an int in [1, n_expert={weights.n_expert}], got {top_k!r}"
            )
        if weights.format == "q8_0" and (weights.hidden % 32 or weights.intermediate % 32):
            raise ValueError(
                "q8_0 experts need hidden and intermediate sizes that are multiples of 32"
            )
        self.runtime = runtime
        self.layer_idx = int(layer_idx) if isinstance(layer_idx, int) else layer_idx
        self.n_expert, self.hidden, self.intermediate = (
            weights.n_expert,
            weights.hidden,
            weights.intermediate,
        )
        self.top_k = top_k
        fmt, packed = pack_expert_weights(weights)
        self.format = fmt
        runtime.register_layer(
            layer_idx, fmt, self.hidden, self.intermediate, self.n_expert, top_k, packed
        )
        del packed
        self._next_router = None
        self.set_next_router(next_router)

    def set_next_router(self, router) -> None:
        """Layer l + 1's router: callable hidden [T, H] -> logits [T, E], weight [E, H], or None."""
        if router is None or callable(router):
            self._next_router = router
            return
        if isinstance(router, torch.Tensor):
            if router.dim() != 2 or router.shape[1] != self.hidden:
                raise ValueError(
                    f"next_router weight must be [n_expert, {self.hidden}], got "
                    f"{list(router.shape)}"
                )
            self._next_router = router
            return
        raise TypeError(
            f"next_router must be a callable, a weight tensor [E, H] or None, got "
            f"{type(router).__name__}"
        )

    def _hints(self, hidden: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        """Next-layer prefetch hints: (tensor, kind) for the runtime, or (None, 0).

        Decode on a GPU hands layer l + 1's router logits [T, E] (fp32 or bf16, kind 1 / 2) to the
        runtime, whose planner takes their top k on the host: the hint costs the router GEMV only
        (no top-k, cast and copy kernels between layers). Otherwise the top-k ids (kind 0)."""
        r = self._next_router
        if r is None:
            return None, 0
        with torch.no_grad():
            logits = hidden @ r.to(hidden.dtype).T if isinstance(r, torch.Tensor) else r(hidden)
            if (
                not isinstance(logits, torch.Tensor)
                or logits.dim() != 2
                or logits.shape[0] != hidden.shape[0]
            ):
                got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
                raise ValueError(
                    f"next_router must return logits [T={hidden.shape[0]}, E], got {got}"
                )
            if logits.shape[1] != self.n_expert:  # another expert count: no usable prediction
                return None, 0
            if logits.device != hidden.device:
                raise ValueError(
                    f"next_router's logits must be on {hidden.device}, got {logits.device}"
                )
            if (
                hidden.device.type == "cuda"
                and hidden.shape[0] <= self.runtime.decode_max_tokens
                and self.top_k <= 64  # the planner's top-k bound (runtime/hint_topk.h)
            ):
                if logits.dtype not in (torch.float32, torch.bfloat16):
                    logits = logits.float()
                return logits.contiguous(), 1 if logits.dtype == torch.float32 else 2
            k = min(self.top_k, logits.shape[-1])
            return torch.topk(logits.float(), k, dim=-1).indices.to(torch.int32).contiguous(), 0

    def _check(self, hidden, topk_ids, topk_weights) -> None:
        if (
            not isinstance(hidden, torch.Tensor)
            or hidden.dim() != 2
            or hidden.shape[1] != self.hidden
        ):
            got = list(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"hidden_states must be a tensor [T, {self.hidden}], got {got}")
        if hidden.dtype not in _HIDDEN_DTYPES:
            raise ValueError(
                f"hidden_states must be bfloat16, float32 or float16, got {hidden.dtype}"
            )
        dev = self.runtime.device
        if hidden.device != dev:
            raise ValueError(
                f"hidden_states must be on the runtime's device {dev}, got {hidden.device}"
            )
        T = hidden.shape[0]
        if (
            not isinstance(topk_ids, torch.Tensor)
            or topk_ids.dim() != 2
            or tuple(topk_ids.shape) != (T, self.top_k)
        ):
            got = (
                list(topk_ids.shape)
                if isinstance(topk_ids, torch.Tensor)
                else type(topk_ids).__name__
            )
            raise ValueError(f"topk_ids must be a tensor [T={T}, top_k={self.top_k}], got {got}")
        if topk_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
        if not isinstance(topk_weights, torch.Tensor) or tuple(topk_weights.shape) != (
            T,
            self.top_k,
        ):
            got = (
                list(topk_weights.shape)
                if isinstance(topk_weights, torch.Tensor)
                else type(topk_weights).__name__
            )
            raise ValueError(
                f"topk_weights must be a tensor [T={T}, top_k={self.top_k}], got {got}"
            )
        if not topk_weights.is_floating_point():
            raise ValueError(f"topk_weights must be a floating tensor, got {topk_weights.dtype}")
        for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
            if t.device != dev:
                raise ValueError(f"{name} must be on the runtime's device {dev}, got {t.device}")
        if dev.type == "cpu" and topk_ids.numel():
            lo, hi = int(topk_ids.min()), int(topk_ids.max())
            if lo < 0 or hi >= self.n_expert:
                raise ValueError(
                    f"topk_ids must lie in [0, {self.n_expert}), got min {lo} max {hi}"
                )

    def forward(
        self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states [T, H] (bf16/fp32/fp16), topk_ids [T, k] int, topk_weights [T, k] float
        -> [T, H] in hidden_states' dtype: sum_j w[t, j] * expert_{ids[t, j]}(x_t)."""
        self._check(hidden_states, topk_ids, topk_weights)
        rt = self.runtime.native
        T, H = hidden_states.shape
        if T == 0:
            return hidden_states.new_zeros(0, H)
        ids = topk_ids.to(torch.int32).contiguous()
        w = topk_weights.to(torch.float32).contiguous()
        hints, hint_kind = self._hints(hidden_states)
        h_ptr, n_h = (hints.data_ptr(), hints.numel()) if hints is not None else (0, 0)
        if hidden_states.device.type == "cpu":
            out = torch.zeros(T, H, dtype=torch.float32)  # forward_cpu adds to it
            x = hidden_states.to(torch.float32).contiguous()
            rt.forward_cpu(
                self.layer_idx,
                T,
                x.data_ptr(),
                ids.data_ptr(),
                w.data_ptr(),
                h_ptr,
                n_h,
                out.data_ptr(),
            )
        else:
            x = hidden_states.to(torch.bfloat16).contiguous()
            if x.data_ptr() % 16:
                x = x.clone()
            # forward_cuda overwrites out (no zero-fill), in bf16 directly for bf16 models.
            out_bf16 = hidden_states.dtype == torch.bfloat16
            out = torch.empty(
                T,
                H,
                dtype=torch.bfloat16 if out_bf16 else torch.float32,
                device=hidden_states.device,
            )
            stream = torch.cuda.current_stream(hidden_states.device).cuda_stream
            rt.forward_cuda(
                self.layer_idx,
                T,
                x.data_ptr(),
                ids.data_ptr(),
                w.data_ptr(),
                h_ptr,
                n_h,
                hint_kind,
                out.data_ptr(),
                out_bf16,
                stream,
            )
        return out.to(hidden_states.dtype)

    def stats(self) -> dict:
        """This layer's counters (Runtime.stats()['layers'][layer_idx])."""
        return self.runtime.stats()["layers"][self.layer_idx]

    def extra_repr(self) -> str:
        return (
            f"layer_idx={self.layer_idx}, n_expert={self.n_expert}, hidden={self.hidden}, "
            f"intermediate={self.intermediate}, top_k={self.top_k}, format={self.format}"
        )
