"""Expert weight loaders: GGUF files, Hugging Face safetensors checkpoints and torch tensors, all
returning ExpertWeights (one per MoE layer; shapes and formats in loaders/tensors.py)."""

from hybrid_moe.loaders.gguf import GGUFExperts, GGUFMoEInfo, load_gguf_experts
from hybrid_moe.loaders.safetensors import SafetensorsExperts, load_safetensors_experts
from hybrid_moe.loaders.tensors import (
    Q8_0_BLOCK,
    Q8_0_BYTES,
    ExpertWeights,
    dequantize_q8_0,
    load_state_dict_experts,
)

__all__ = [
    "Q8_0_BLOCK",
    "Q8_0_BYTES",
    "ExpertWeights",
    "GGUFExperts",
    "GGUFMoEInfo",
    "SafetensorsExperts",
    "dequantize_q8_0",
    "load_gguf_experts",
    "load_safetensors_experts",
    "load_state_dict_experts",
]
