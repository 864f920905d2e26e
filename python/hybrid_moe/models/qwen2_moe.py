"""Qwen2-MoE (transformers model_type 'qwen2_moe'): Qwen3's router (norm_topk_prob from the
config) plus a shared expert that stays in torch:
    out = experts(x) + sigmoid(shared_expert_gate(x)) * shared_expert(x)."""

from __future__ import annotations

import torch
from torch import nn

from hybrid_moe.models.base import MoEBlockSpec, softmax_block_spec

FAMILY = "qwen2_moe"
MODEL_TYPES = ("qwen2_moe",)


def make_spec(block: nn.Module, name: str, config) -> MoEBlockSpec:
    spec = softmax_block_spec(
        FAMILY, block, name, config, normalize=bool(getattr(config, "norm_topk_prob", False))
    )
    shared_expert, shared_gate = block.shared_expert, block.shared_expert_gate

    def shared(hidden: torch.Tensor) -> torch.Tensor:
        # Same operation order as Qwen2MoeSparseMoeBlock.forward.
        out = shared_expert(hidden)
        return torch.sigmoid(shared_gate(hidden)) * out

    spec.torch_modules.update(shared_expert=shared_expert, shared_expert_gate=shared_gate)
    spec.shared = shared
    return spec
