"""Qwen3-MoE (transformers model_type 'qwen3_moe'): softmax top-k router, renormalised when
config.norm_topk_prob, weights cast to the logits' dtype; no shared experts."""

from __future__ import annotations

from torch import nn

from hybrid_moe.models.base import MoEBlockSpec, softmax_block_spec

FAMILY = "qwen3_moe"
MODEL_TYPES = ("qwen3_moe",)


def make_spec(block: nn.Module, name: str, config) -> MoEBlockSpec:
    return softmax_block_spec(FAMILY, block, name, config, normalize=bool(config.norm_topk_prob))
