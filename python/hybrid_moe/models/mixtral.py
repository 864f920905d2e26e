"""Mixtral (transformers model_type 'mixtral'): softmax over all experts, top-k, always renormalised
over the k (equivalent to a softmax over the top-k logits). transformers 5 keeps these weights in
float32; 4.x (the ModuleList layout) cast them to the hidden dtype: reproduced per layout. Router
jitter noise applies only in training, which the patched model does not support."""

from __future__ import annotations

from torch import nn

from hybrid_moe.models.base import MoEBlockSpec, softmax_block_spec

FAMILY = "mixtral"
MODEL_TYPES = ("mixtral",)


def make_spec(block: nn.Module, name: str, config) -> MoEBlockSpec:
    return softmax_block_spec(FAMILY, block, name, config, normalize=True, round_fused=False)
