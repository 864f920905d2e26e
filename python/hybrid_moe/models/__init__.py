"""Model adapters: per architecture family, find the MoE blocks of a Hugging Face model and describe
each as a MoEBlockSpec (router in torch, routed experts as ExpertWeights, shared experts in torch).
"""

from hybrid_moe.models.base import MoEBlockSpec, find_moe_blocks
from hybrid_moe.models.registry import (
    SUPPORTED_MODEL_TYPES,
    adapter_for,
    model_config,
    moe_block_specs,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "MoEBlockSpec",
    "adapter_for",
    "find_moe_blocks",
    "model_config",
    "moe_block_specs",
]
