"""Routed expert weights from Hugging Face safetensors checkpoints, read lazily one layer at a time.

Tensor names: see loaders/names.py (per-expert gate_proj/up_proj/down_proj, Mixtral's w1/w3/w2,
and transformers' fused experts.gate_up_proj [E, 2I, H] / experts.down_proj [E, H, I]).

`path` is one .safetensors file or a directory of them (a sharded checkpoint). Opening reads only
the file headers; `layer(n)` reads that layer's tensors through safetensors' memory map. Dense
dtypes: bfloat16 stays bfloat16, float16/float32 become float32 (lossless) unless `dtype` asks for
bfloat16 or float32. Anything else (e.g. float8 checkpoints) raises ValueError naming the tensor.
When config.json lies beside the files its expert count (num_experts / num_local_experts /
n_routed_experts) is used, so a missing last expert is reported too.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import torch

from hybrid_moe.loaders.names import ExpertIndex
from hybrid_moe.loaders.tensors import ExpertWeights

_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def _safe_open(path: str):
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading safetensors checkpoints needs the safetensors package: pip "
            "install 'hybrid_moe[hf]' (or pip install safetensors)"
        ) from exc
    try:
        return safe_open(path, framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError on bad headers
        raise ValueError(
            f"{path}: not a readable safetensors file (corrupt or truncated?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


class SafetensorsExperts:
    """A safetensors checkpoint opened for its routed experts; `layer(n)` reads layer n."""

    def __init__(self, path: str | os.PathLike[str]):
        p = Path(path)
        if p.is_dir():
            files, config = sorted(p.glob("*.safetensors")), p / "config.json"
        elif p.is_file():
            files, config = [p], p.parent / "config.json"
        else:
            raise FileNotFoundError(f"safetensors checkpoint not found: {p}")
        if not files:
            raise ValueError(f"{p}: directory holds no *.safetensors files")
        self.path = str(p)
        self._where: dict[str, str] = {}  # tensor name -> file holding it
        for f in files:
            with _safe_open(str(f)) as fh:
                for k in fh.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    self._where[k] = str(f)
        self.index = ExpertIndex(self._where, self.path)
        self.n_expert_config: int | None = None
        if config.is_file():
            cfg = json.loads(config.read_text())
            cfg = cfg.get("text_config", cfg)
            for k in _EXPERT_COUNT_KEYS:
                if isinstance(cfg.get(k), int) and cfg[k] > 0:
                    self.n_expert_config = cfg[k]
                    break

    @property
    def moe_layers(self) -> list[int]:
        return self.index.moe_layers

    def layout(self, n: int) -> str:
        """'per-expert' or 'fused'."""
        return self.index.entry(n)["layout"]

    def layer(self, n: int, dtype: torch.dtype | None = None) -> ExpertWeights:
        """Layer n's routed experts; `dtype` (bfloat16 or float32) converts them if given."""
        with ExitStack() as stack:
            handles: dict[str, object] = {}

            def read(name: str) -> torch.Tensor:
                f = self._where[name]
                if f not in handles:
                    handles[f] = stack.enter_context(_safe_open(f))
                try:
                    return handles[f].get_tensor(name)
                except Exception as exc:
                    raise ValueError(
                        f"{f}: cannot read tensor {name} (corrupt or truncated "
                        f"file?): {type(exc).__name__}: {exc}"
                    ) from exc

            return self.index.assemble(n, read, dtype, self.n_expert_config)

    def layers(
        self, which: list[int] | None = None, dtype: torch.dtype | None = None
    ) -> dict[int, ExpertWeights]:
        return {n: self.layer(n, dtype) for n in (self.moe_layers if which is None else which)}


def load_safetensors_experts(
    path: str | os.PathLike[str], layers: list[int] | None = None, dtype: torch.dtype | None = None
) -> dict[int, ExpertWeights]:
    """{layer index: ExpertWeights} of a safetensors checkpoint (all MoE layers, or `layers`)."""
    return SafetensorsExperts(path).layers(layers, dtype)
