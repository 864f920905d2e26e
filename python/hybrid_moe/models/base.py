"""MoEBlockSpec: what patch() and the runtime need to know about one Hugging Face MoE block, and
the helpers the family adapters share (expert weights from either transformers layout).

transformers has stored routed experts two ways, and both are read here:
  ModuleList (4.x):  block.experts[e].{gate_proj,up_proj,down_proj} (Mixtral: .w1/.w3/.w2),
                     nn.Linear weights [I, H], [I, H], [H, I]; the router `gate` is nn.Linear
                     (DeepSeek: a gate module with .weight); the Qwen/Mixtral/OLMoE blocks return
                     (hidden, router_logits).
  fused (5.x):       block.experts.gate_up_proj [E, 2I, H] (gate rows, then up) and
                     block.experts.down_proj [E, H, I]; the router `gate` is a TopKRouter module
                     with .weight [E, H]; blocks return the hidden states alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from hybrid_moe.loaders.tensors import ExpertWeights

RouteFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MoEBlockSpec:
    """One MoE block of a model, as the adapters describe it.

    route(hidden [T, H]) -> (topk_ids int64 [T, k], topk_weights float32 [T, k]) reproduces the
    block's routing exactly; it is select(router_logits(hidden)): router_logits(hidden [T, H]) ->
    [T, E] are the block's router logits (also returned by blocks with returns_router_logits) and
    select(logits) -> (topk_ids, topk_weights) the top-k choice and weighting. torch_modules are
    the block's submodules that stay in torch under their original attribute names (router
    `gate`, shared experts), so the patched block's state-dict names for them do not change;
    shared(hidden [T, H]) -> [T, H] is the shared-expert output to add (None when the family
    has none). experts are the routed experts (views of the block's parameters: no copy);
    patch() drops this reference once the executor holds its copy. expert_param_names lists the
    block's parameters that patch() releases (relative to the block).
    """

    family: str
    module_name: str  # e.g. 'model.layers.3.mlp'
    layer_idx: int
    n_expert: int
    top_k: int
    hidden: int
    intermediate: int
    layout: str  # 'fused' | 'modulelist'
    route: RouteFn
    router_logits: Callable[[torch.Tensor], torch.Tensor]
    select: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    experts: ExpertWeights | None
    torch_modules: dict[str, nn.Module] = field(default_factory=dict)
    shared: Callable[[torch.Tensor], torch.Tensor] | None = None
    returns_router_logits: bool = False
    expert_param_names: list[str] = field(default_factory=list)


_PROJ_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


def expert_layout(experts: nn.Module) -> str:
    """'fused' or 'modulelist' for a block's `experts` submodule (ValueError otherwise)."""
    if (
        hasattr(experts, "gate_up_proj")
        and hasattr(experts, "down_proj")
        and isinstance(experts.gate_up_proj, torch.Tensor)
    ):
        return "fused"
    if isinstance(experts, nn.ModuleList) and len(experts) > 0:
        return "modulelist"
    raise ValueError(
        f"unknown experts layout {type(experts).__name__}: expected fused "
        f"gate_up_proj/down_proj parameters or an nn.ModuleList of expert MLPs"
    )


def expert_weights(experts: nn.Module, where: str) -> ExpertWeights:
    """The routed experts of `experts` (fused or ModuleList) as ExpertWeights, without copying the
    fused layout (ModuleList experts are stacked: one copy)."""
    if expert_layout(experts) == "fused":
        for bias in ("gate_up_proj_bias", "down_proj_bias"):
            if getattr(experts, bias, None) is not None:
                raise ValueError(f"{where}: expert biases ({bias}) are not supported")
        return ExpertWeights.from_fused(experts.gate_up_proj.detach(), experts.down_proj.detach())
    mats: dict[str, list[torch.Tensor]] = {"gate": [], "up": [], "down": []}
    first = experts[0]
    names = next((n for n in _PROJ_NAMES if all(hasattr(first, a) for a in n)), None)
    if names is None:
        raise ValueError(
            f"{where}: expert MLP {type(first).__name__} has neither "
            f"gate_proj/up_proj/down_proj nor w1/w3/w2"
        )
    for e, mlp in enumerate(experts):
        for key, attr in zip(("gate", "up", "down"), names, strict=True):
            lin = getattr(mlp, attr)
            if getattr(lin, "bias", None) is not None:
                raise ValueError(f"{where}.experts.{e}.{attr}: expert biases are not supported")
            mats[key].append(lin.weight.detach())
    return ExpertWeights.stack(mats["gate"], mats["up"], mats["down"])


def expert_param_names(block: nn.Module) -> list[str]:
    return [f"experts.{n}" for n, _ in block.experts.named_parameters()]


def check_silu(config, family: str) -> None:
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(
            f"{family}: experts with hidden_act={act!r} are not supported; the "
            f"expert kernels compute silu(gate x) * up x"
        )


def router_logits_fn(
    gate: nn.Module, float32: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits = hidden @ gate.weight^T, as the block computes them (float32 for DeepSeek)."""

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        if float32:
            return torch.nn.functional.linear(hidden.float(), gate.weight.float())
        return torch.nn.functional.linear(hidden, gate.weight)

    return logits


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def find_moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every module with both a router `gate` and routed `experts`
    submodule, in model order. Works for both transformers layouts and any attribute name of
    the block (`mlp`, Mixtral 4.x's `block_sparse_moe`)."""
    found = []
    for name, mod in model.named_modules():
        experts = getattr(mod, "experts", None)
        gate = getattr(mod, "gate", None)
        if isinstance(experts, nn.Module) and isinstance(gate, nn.Module):
            found.append((name, mod))
    return found


def layer_index(module_name: str) -> int:
    m = _LAYER_RE.search(module_name)
    if m is None:
        raise ValueError(
            f"cannot tell the layer index of MoE block {module_name!r} (expected '...layers.N...')"
        )
    return int(m.group(1))


def softmax_block_spec(
    family: str, block: nn.Module, name: str, config, normalize: bool, round_fused: bool = True
) -> MoEBlockSpec:
    """Spec of a softmax-top-k block (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral). The weights are cast
    to the logits' dtype as the block does, except Mixtral's fused (transformers 5) block which
    keeps them float32 (round_fused=False)."""
    from hybrid_moe.models.routing import softmax_topk

    check_silu(config, family)
    gate = block.gate
    layout = expert_layout(block.experts)
    weights = expert_weights(block.experts, name)
    n_expert = int(getattr(config, "num_experts", None) or config.num_local_experts)
    top_k = int(config.num_experts_per_tok)
    if weights.n_expert != n_expert:
        raise ValueError(f"{name}: {weights.n_expert} experts but config says {n_expert}")
    logits_fn = router_logits_fn(gate)
    cast = round_fused or layout == "modulelist"

    def select(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return softmax_topk(logits, top_k, normalize, logits.dtype if cast else None)

    def route(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return select(logits_fn(hidden))

    return MoEBlockSpec(
        family=family,
        module_name=name,
        layer_idx=layer_index(name),
        n_expert=n_expert,
        top_k=top_k,
        hidden=weights.hidden,
        intermediate=weights.intermediate,
        layout=layout,
        route=route,
        router_logits=logits_fn,
        select=select,
        experts=weights,
        torch_modules={"gate": gate},
        shared=None,
        returns_router_logits=(layout == "modulelist"),
        expert_param_names=expert_param_names(block),
    )
