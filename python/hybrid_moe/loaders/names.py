"""Hugging Face expert tensor names -> ExpertWeights (shared by the safetensors and state-dict
loaders).

Recognised names (any prefix before `layers.N.`, any module path between it and `experts`):
  per-expert  ...layers.N.<...>.experts.E.{gate_proj,up_proj,down_proj}.weight
                  (Qwen3-MoE, Qwen2-MoE, OLMoE, DeepSeek-V2/V3)
              ...layers.N.block_sparse_moe.experts.E.{w1,w3,w2}.weight   (Mixtral: gate, up, down)
  fused       ...layers.N.<...>.experts.gate_up_proj [E, 2I, H] and ...experts.down_proj [E, H, I]
                  (newer transformers' layout, e.g. modeling_qwen3_moe.Qwen3MoeExperts: gate rows
                  first, then up; an optional trailing `.weight` is accepted)
Shared experts (`shared_expert.*`, `shared_experts.*`) do not match: they stay with the torch model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

from hybrid_moe.loaders.tensors import ExpertWeights

_PER_EXPERT = re.compile(
    r"^(?P<prefix>(?:.*\.)?layers\.(?P<layer>\d+)\.(?:.*\.)?experts)\.(?P<e>\d+)\."
    r"(?P<proj>gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$"
)
_FUSED = re.compile(
    r"^(?P<prefix>(?:.*\.)?layers\.(?P<layer>\d+)\.(?:.*\.)?experts)\."
    r"(?P<proj>gate_up_proj|down_proj)(?:\.weight)?$"
)
_PROJ = {
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "w1": "gate",
    "w3": "up",
    "w2": "down",
}
_HF_NAME = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_MIXTRAL_NAME = {"gate": "w1", "up": "w3", "down": "w2"}
DENSE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class ExpertIndex:
    """Groups tensor names by MoE layer. `source` names the checkpoint in error messages."""

    def __init__(self, names: Iterable[str], source: str):
        self.source = source
        # layer -> {'layout': 'per-expert'|'fused', 'prefix': str, 'names': {key: name}}
        self.layers: dict[int, dict] = {}
        for name in names:
            m = _PER_EXPERT.match(name) or _FUSED.match(name)
            if m is None:
                continue
            layer = int(m["layer"])
            layout = "per-expert" if "e" in m.groupdict() else "fused"
            entry = self.layers.setdefault(
                layer, {"layout": layout, "prefix": m["prefix"], "names": {}}
            )
            if entry["prefix"] != m["prefix"] or entry["layout"] != layout:
                raise ValueError(
                    f"{source}: layer {layer} has experts under two names or "
                    f"layouts: {entry['prefix']} ({entry['layout']}) and "
                    f"{m['prefix']} ({layout})"
                )
            key = (int(m["e"]), _PROJ[m["proj"]]) if layout == "per-expert" else m["proj"]
            entry["names"][key] = name
        if not self.layers:
            raise ValueError(
                f"{source}: no routed expert tensors found (looked for "
                f"layers.N...experts.E.gate_proj.weight, ...experts.E.w1.weight and "
                f"...experts.gate_up_proj)"
            )

    @property
    def moe_layers(self) -> list[int]:
        return sorted(self.layers)

    def entry(self, n: int) -> dict:
        if n not in self.layers:
            raise ValueError(
                f"{self.source}: layer {n} has no routed experts; MoE layers are {self.moe_layers}"
            )
        return self.layers[n]

    def assemble(
        self,
        n: int,
        read: Callable[[str], torch.Tensor],
        dtype: torch.dtype | None,
        n_expert: int | None = None,
    ) -> ExpertWeights:
        """Layer n's ExpertWeights, reading each tensor with `read(name)`. n_expert (e.g. from
        config.json) lets a missing last expert be reported; else it is max index + 1."""
        if dtype not in (None, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be None, torch.bfloat16 or torch.float32, got {dtype}")
        entry = self.entry(n)
        names = entry["names"]

        def get(name: str) -> torch.Tensor:
            t = read(name)
            if not isinstance(t, torch.Tensor) or t.dtype not in DENSE_DTYPES:
                raise ValueError(
                    f"{self.source}: tensor {name} has dtype "
                    f"{getattr(t, 'dtype', type(t).__name__)}, which hybrid_moe does "
                    f"not load here; supported: bfloat16, float16, float32"
                )
            return t if dtype is None else t.to(dtype)

        if entry["layout"] == "fused":
            for proj in ("gate_up_proj", "down_proj"):
                if proj not in names:
                    raise ValueError(f"{self.source}: tensor {entry['prefix']}.{proj} is missing")
            return ExpertWeights.from_fused(get(names["gate_up_proj"]), get(names["down_proj"]))
        count = n_expert or 1 + max(e for e, _ in names)
        hf = _MIXTRAL_NAME if entry["prefix"].endswith("block_sparse_moe.experts") else _HF_NAME
        mats: dict[str, list[torch.Tensor]] = {"gate": [], "up": [], "down": []}
        for e in range(count):
            for p in ("gate", "up", "down"):
                if (e, p) not in names:
                    raise ValueError(
                        f"{self.source}: tensor {entry['prefix']}.{e}.{hf[p]}.weight is missing"
                    )
                mats[p].append(get(names[(e, p)]))
        return ExpertWeights.stack(mats["gate"], mats["up"], mats["down"])
