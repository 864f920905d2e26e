"""OLMoE (transformers model_type 'olmoe'): same router as Qwen3-MoE (softmax top-k, renormalised
when config.norm_topk_prob, which OLMoE leaves False), no shared experts."""

from __future__ import annotations

from torch import nn

from hybrid_moe.models.base import MoEBlockSpec, softmax_block_spec

FAMILY = "olmoe"
MODEL_TYPES = ("olmoe",)


def make_spec(block: nn.Module, name: str, config) -> MoEBlockSpec:
    return softmax_block_spec(
        FAMILY, block, name, config, normalize=bool(getattr(config, "norm_topk_prob", False))
    )
