"""DeepSeek-V2 and DeepSeek-V3 (transformers model_types 'deepseek_v2', 'deepseek_v3').

Routers (see routing.py): V3 sigmoid scores + e_score_correction_bias for the choice, group-limited
top-k, renormalised, times routed_scaling_factor; V2 softmax, greedy or group-limited greedy, times
routed_scaling_factor. Both compute the router logits in float32. The shared experts
(`shared_experts`, one MLP of n_shared_experts * moe_intermediate_size) stay in torch and are added
to the routed output. The first first_k_dense_replace layers are dense MLPs and are not patched.
"""

from __future__ import annotations

import torch
from torch import nn

from hybrid_moe.models.base import (
    MoEBlockSpec,
    check_silu,
    expert_layout,
    expert_param_names,
    expert_weights,
    layer_index,
    router_logits_fn,
)
from hybrid_moe.models.routing import deepseek_v2_topk, deepseek_v3_topk

FAMILY = "deepseek"
MODEL_TYPES = ("deepseek_v2", "deepseek_v3")


def _n_expert(config) -> int:
    for k in ("n_routed_experts", "num_local_experts", "num_experts"):
        v = getattr(config, k, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError("DeepSeek config has no n_routed_experts")


def make_spec(block: nn.Module, name: str, config) -> MoEBlockSpec:
    check_silu(config, FAMILY)
    gate = block.gate
    weights = expert_weights(block.experts, name)
    n_expert, top_k = _n_expert(config), int(config.num_experts_per_tok)
    if weights.n_expert != n_expert:
        raise ValueError(f"{name}: {weights.n_expert} experts but config says {n_expert}")
    logits_fn = router_logits_fn(gate, float32=True)
    scaling = float(getattr(config, "routed_scaling_factor", 1.0) or 1.0)
    n_group = int(getattr(config, "n_group", None) or 1)
    topk_group = int(getattr(config, "topk_group", None) or n_group)
    if n_expert % n_group:
        raise ValueError(
            f"{name}: n_routed_experts={n_expert} is not a multiple of n_group={n_group}"
        )
    if config.model_type == "deepseek_v3":
        normalize = bool(getattr(config, "norm_topk_prob", True))
        if not isinstance(getattr(gate, "e_score_correction_bias", None), torch.Tensor):
            raise ValueError(f"{name}.gate has no e_score_correction_bias (DeepSeek-V3 router)")

        def select(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return deepseek_v3_topk(
                logits, gate.e_score_correction_bias, top_k, n_group, topk_group, normalize, scaling
            )
    else:
        method = getattr(config, "topk_method", None) or "greedy"
        if method not in ("greedy", "group_limited_greedy"):
            raise ValueError(
                f"{name}: DeepSeek-V2 topk_method {method!r} is not supported; "
                f"expected 'greedy' or 'group_limited_greedy'"
            )

        def select(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return deepseek_v2_topk(logits, top_k, method, n_group, topk_group, scaling)

    def route(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return select(logits_fn(hidden))

    shared_experts = getattr(block, "shared_experts", None)
    mods: dict[str, nn.Module] = {"gate": gate}
    if shared_experts is not None:
        mods["shared_experts"] = shared_experts
    return MoEBlockSpec(
        family=config.model_type,
        module_name=name,
        layer_idx=layer_index(name),
        n_expert=n_expert,
        top_k=top_k,
        hidden=weights.hidden,
        intermediate=weights.intermediate,
        layout=expert_layout(block.experts),
        route=route,
        router_logits=logits_fn,
        select=select,
        experts=weights,
        torch_modules=mods,
        shared=shared_experts,
        returns_router_logits=False,
        expert_param_names=expert_param_names(block),
    )
