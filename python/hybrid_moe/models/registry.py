"""Which adapter handles which Hugging Face model_type, and the MoE block specs of a model."""

from __future__ import annotations

from types import ModuleType

from torch import nn

from hybrid_moe.models import deepseek, mixtral, olmoe, qwen2_moe, qwen3_moe
from hybrid_moe.models.base import MoEBlockSpec, find_moe_blocks

_ADAPTERS: dict[str, ModuleType] = {
    t: mod for mod in (qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek) for t in mod.MODEL_TYPES
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))


def model_config(model: nn.Module):
    """The (text) config of a Hugging Face model; ValueError when it has none."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"{type(model).__name__} has no .config: expected a Hugging Face "
            f"model of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return getattr(config, "text_config", None) or config


def adapter_for(model: nn.Module) -> ModuleType:
    """The adapter module for the model's config.model_type (ValueError listing the supported)."""
    model_type = getattr(model_config(model), "model_type", None)
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return _ADAPTERS[model_type]


def moe_block_specs(model: nn.Module) -> list[tuple[nn.Module, MoEBlockSpec]]:
    """(block module, MoEBlockSpec) for every MoE block of a supported model, in layer order."""
    adapter = adapter_for(model)
    config = model_config(model)
    out = [
        (block, adapter.make_spec(block, name, config)) for name, block in find_moe_blocks(model)
    ]
    if not out:
        raise ValueError(
            f"{type(model).__name__} ({config.model_type}) has no MoE block "
            f"(a module with `gate` and `experts` submodules)"
        )
    return out
