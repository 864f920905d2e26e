"""patch(): swap the MoE blocks of a Hugging Face model for PatchedMoEBlock, keeping the router and
shared experts in torch and handing the routed experts to an expert executor.

Supported (transformers model_type): qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek_v2,
deepseek_v3, in both transformers expert layouts (4.x nn.ModuleList of expert MLPs, 5.x fused
gate_up_proj/down_proj); see hybrid_moe/models/.

PatchedMoEBlock.forward(hidden [B, S, H] or [T, H]):
    x = hidden.reshape(T, H)
    logits = spec.router_logits(x); topk_ids, topk_weights = spec.select(logits)   (torch)
    out = experts(x, topk_ids [T, k] int64, topk_weights [T, k] float32)          (executor)
    out = out + spec.shared(x)                             (shared experts, torch, if any)
and returns out in hidden's shape, dtype and device; blocks that returned (hidden, router_logits)
in the installed transformers (4.x Qwen/Mixtral/OLMoE) return that tuple too.

The executor is any nn.Module with forward(hidden [T, H], topk_ids [T, k], topk_weights [T, k])
-> [T, H] (same dtype/device as hidden). Today `make_layer(spec) -> nn.Module` builds it, e.g.
`make_layer=lambda spec: ReferenceExperts(spec.experts)` (hybrid_moe.reference).

With a Runtime (issue 6): `patch(model, runtime)` builds `HybridMoELayer(runtime, i,
spec.experts, top_k=spec.top_k)` for the i-th MoE block (runtime layers are numbered 0..n-1 over
the MoE blocks only, so models with leading dense layers work), declares the block count to the
runtime first (each layer then goes straight into pinned memory), and wires block i's executor to
block i + 1's router (next-layer prefetch hints). The layer copies the ExpertWeights into the
runtime's host store ('f32' rounded to bf16), after which patch() releases the original
parameters. `runtime` may also be a make_layer callable (the older form).

Release: once the executor is built, the original block's `experts` submodule is deleted and the
spec's ExpertWeights reference dropped, so the expert tensors are freed as soon as nothing else
(the executor, the caller) holds them. Every block is validated before the model is changed: an
unsupported model or block raises ValueError and leaves the model as it was. Blocks are then
swapped one at a time (so host memory peaks at one layer's copy); if make_layer fails on block n,
blocks before n stay patched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from hybrid_moe.models import MoEBlockSpec, moe_block_specs

MakeLayer = Callable[[MoEBlockSpec], nn.Module]


class PatchedMoEBlock(nn.Module):
    """A Hugging Face MoE block with its routed experts computed by `experts` (the executor).

    Submodules: the block's torch_modules under their original names (`gate`, `shared_expert`,
    `shared_expert_gate`, `shared_experts`), so their state-dict names are unchanged, and
    `experts` = the executor.
    """

    def __init__(self, spec: MoEBlockSpec, experts: nn.Module):
        super().__init__()
        for name, mod in spec.torch_modules.items():
            self.add_module(name, mod)
        self.experts = experts
        self.family = spec.family
        self.layer_idx = spec.layer_idx
        self.hidden_size = spec.hidden
        self.top_k = spec.top_k
        self.n_expert = spec.n_expert
        self.returns_router_logits = spec.returns_router_logits
        # Plain callables bound to the kept torch modules (they read those modules' parameters
        # at call time, so .to(device) of this block is seen).
        self._router_logits = spec.router_logits
        self._select = spec.select
        self._shared = spec.shared

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> (topk_ids int64 [T, k], topk_weights float32 [T, k])."""
        return self._select(self._router_logits(x))

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        if shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must end in hidden size {self.hidden_size}, got {list(shape)}"
            )
        x = hidden_states.reshape(-1, self.hidden_size)
        logits = self._router_logits(x)
        topk_ids, topk_weights = self._select(logits)
        out = self.experts(x, topk_ids, topk_weights)
        if self._shared is not None:
            out = out + self._shared(x)
        out = out.reshape(shape)
        if self.returns_router_logits:
            return out, logits
        return out

    def extra_repr(self) -> str:
        return (
            f"family={self.family}, layer={self.layer_idx}, n_expert={self.n_expert}, "
            f"top_k={self.top_k}"
        )


def _resolve_make_layer(runtime, make_layer) -> MakeLayer:
    if runtime is not None and make_layer is not None:
        raise TypeError("patch() takes either runtime or make_layer, not both")
    if make_layer is not None:
        if not callable(make_layer):
            raise TypeError(
                f"make_layer must be callable as make_layer(spec: MoEBlockSpec) -> "
                f"nn.Module, got {type(make_layer).__name__}"
            )
        return make_layer
    if runtime is None:
        raise TypeError(
            "patch() needs make_layer (a callable make_layer(spec: MoEBlockSpec) -> "
            "nn.Module with forward(hidden [T,H], topk_ids [T,k], topk_weights [T,k]))"
            " or runtime"
        )
    from hybrid_moe.runtime import Runtime

    if isinstance(runtime, Runtime):
        return _runtime_make_layer(runtime)
    if not callable(runtime):
        raise TypeError(
            f"runtime must be callable as make_layer(spec: MoEBlockSpec) -> nn.Module "
            f"(an expert executor with forward(hidden [T,H], topk_ids [T,k], "
            f"topk_weights [T,k]) -> [T,H]) or be a hybrid_moe.Runtime; got "
            f"{type(runtime).__name__}"
        )
    return runtime


def _runtime_make_layer(runtime) -> MakeLayer:
    """make_layer numbering the MoE blocks 0, 1, ... in model order for `runtime`."""
    from hybrid_moe.layer import HybridMoELayer

    counter = iter(range(1 << 30))

    def make(spec: MoEBlockSpec) -> nn.Module:
        return HybridMoELayer(runtime, next(counter), spec.experts, top_k=spec.top_k)

    make.runtime = runtime  # type: ignore[attr-defined]
    return make


def patch(model: nn.Module, runtime=None, make_layer: MakeLayer | None = None) -> nn.Module:
    """Replace every MoE block of `model` (in place) with a PatchedMoEBlock whose routed experts
    run in the executor make_layer(spec) (or runtime, see the module docstring); returns model.

    Raises ValueError for an unsupported model type (listing the supported ones) or block, and
    TypeError for a bad make_layer/runtime or an executor that is not an nn.Module."""
    build = _resolve_make_layer(runtime, make_layer)
    specs = moe_block_specs(model)  # validates every block before anything changes
    rt = getattr(build, "runtime", None)
    if rt is not None:
        rt._declare_layers(len(specs))
    modules = dict(model.named_modules())
    for block, spec in specs:
        executor = build(spec)
        if not isinstance(executor, nn.Module):
            raise TypeError(
                f"make_layer returned {type(executor).__name__} for "
                f"{spec.module_name}; expected an nn.Module with forward(hidden "
                f"[T,H], topk_ids [T,k], topk_weights [T,k]) -> [T,H]"
            )
        patched = PatchedMoEBlock(spec, executor)
        parent_name, _, attr = spec.module_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, patched)
        # Release: the executor holds its copy now; drop every reference patch() has.
        spec.experts = None
        del block._modules["experts"]
    if rt is not None:  # next-layer router of each block -> its executor (prefetch hints)
        blocks = patched_blocks(model)
        for cur, nxt in itertools.pairwise(blocks):
            cur.experts.set_next_router(nxt._router_logits)
    return model


def patched_blocks(model: nn.Module) -> list[PatchedMoEBlock]:
    """The PatchedMoEBlocks of a patched model, in model order."""
    return [m for m in model.modules() if isinstance(m, PatchedMoEBlock)]
