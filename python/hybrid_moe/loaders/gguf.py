"""Routed expert weights from GGUF files (llama.cpp's format), read with the `gguf` package.

Two tensor layouts are recognised per block N:
  fused      blk.N.ffn_gate_exps.weight, blk.N.ffn_up_exps.weight, blk.N.ffn_down_exps.weight
             (llama.cpp today: Qwen2/3-MoE, OLMoE, DeepSeek, Mixtral re-converted)
  per-expert blk.N.ffn_gate.E.weight, blk.N.ffn_up.E.weight, blk.N.ffn_down.E.weight, E < n_expert
             (older Mixtral conversions)

GGML lists dimensions innermost first: a fused gate tensor is ne = [H, I, E]; GGUFReader reports
`shape` in that order and gives `data` as a numpy array in row-major order, i.e. [E, I, H] for
F32/F16 and, for BF16 and block-quantized types, uint8 [E, I, row_bytes]. Both match ExpertWeights.

Supported types: BF16 and Q8_0 (what the kernels run), plus F32 and F16 (decoded to float32,
lossless). Q8_0 data stays quantized: the ExpertWeights tensors are zero-copy views of the file,
memory-mapped copy-on-write (the file is never written); BF16 likewise. Per-expert layouts are
stacked into [E, ...] (one copy). Every problem (not a GGUF, truncated, missing tensor, unsupported
type, shapes that disagree with the metadata) raises ValueError naming the file and the tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hybrid_moe.loaders.tensors import ExpertWeights

PROJS = ("gate", "up", "down")
SUPPORTED_TYPES = ("BF16", "Q8_0", "F32", "F16")


def _import_gguf():
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading GGUF files needs the gguf package: pip install "
            "'hybrid_moe[gguf]' (or pip install gguf)"
        ) from exc
    return gguf


@dataclass
class GGUFMoEInfo:
    """What the file's metadata and tensor names say about its MoE layers."""

    path: str
    arch: str  # general.architecture, e.g. 'qwen3moe', 'deepseek2', 'llama'
    n_layer: int  # <arch>.block_count
    n_expert: int  # <arch>.expert_count
    top_k: int  # <arch>.expert_used_count (0 when absent)
    hidden: int  # <arch>.embedding_length
    intermediate: int  # <arch>.expert_feed_forward_length (else feed_forward_length)
    moe_layers: list[int] = field(default_factory=list)  # blocks that hold routed experts
    layout: dict[int, str] = field(default_factory=dict)  # block -> 'fused' | 'per-expert'


class GGUFExperts:
    """A GGUF file opened for its routed experts; `layer(n)` reads block n's ExpertWeights."""

    def __init__(self, path: str | os.PathLike[str]):
        gguf = _import_gguf()
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        self._qt = gguf.GGMLQuantizationType
        size = Path(self.path).stat().st_size
        try:
            # 'c' = copy-on-write map: torch gets writable arrays without copies; the file is
            # never modified.
            self._reader = gguf.GGUFReader(self.path, "c")
        except Exception as exc:  # the reader raises ValueError/IndexError/... on bad bytes
            raise ValueError(
                f"{self.path}: not a readable GGUF file (corrupt or truncated?): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        for t in self._tensors.values():
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise ValueError(
                    f"{self.path}: tensor {t.name} ends at byte "
                    f"{t.data_offset + t.n_bytes} but the file has {size} bytes "
                    f"(truncated GGUF file)"
                )
        self.info = self._read_info()

    # ---- metadata -----------------------------------------------------------------------------

    def _field(self, key: str, required: bool = True):
        f = self._reader.fields.get(key)
        if f is None:
            if required:
                raise ValueError(f"{self.path}: metadata key {key!r} is missing")
            return None
        value = f.contents()
        return value

    def _read_info(self) -> GGUFMoEInfo:
        arch = str(self._field("general.architecture"))
        n_expert = self._field(f"{arch}.expert_count", required=False)
        if not n_expert:
            raise ValueError(
                f"{self.path}: not an MoE model: metadata has no "
                f"{arch}.expert_count (architecture {arch!r})"
            )
        n_layer = int(self._field(f"{arch}.block_count"))
        hidden = int(self._field(f"{arch}.embedding_length"))
        inter = self._field(f"{arch}.expert_feed_forward_length", required=False)
        if inter is None:  # Mixtral (arch 'llama') has only feed_forward_length
            inter = self._field(f"{arch}.feed_forward_length")
        top_k = self._field(f"{arch}.expert_used_count", required=False) or 0
        info = GGUFMoEInfo(self.path, arch, n_layer, int(n_expert), int(top_k), hidden, int(inter))
        for n in range(n_layer):
            if f"blk.{n}.ffn_gate_exps.weight" in self._tensors:
                info.layout[n] = "fused"
            elif f"blk.{n}.ffn_gate.0.weight" in self._tensors:
                info.layout[n] = "per-expert"
            else:
                continue
            info.moe_layers.append(n)
        if not info.moe_layers:
            raise ValueError(
                f"{self.path}: metadata says {n_expert} experts but no block has "
                f"tensor blk.N.ffn_gate_exps.weight or blk.N.ffn_gate.0.weight"
            )
        return info

    # ---- tensors ------------------------------------------------------------------------------

    def _tensor(self, name: str, want_shape: tuple[int, ...]) -> tuple[torch.Tensor, str]:
        """Tensor `name` as torch (dense float, or uint8 blocks) and its GGML type name; checks the
        logical shape (numpy order, e.g. [E, I, H])."""
        t = self._tensors.get(name)
        if t is None:
            raise ValueError(f"{self.path}: tensor {name} is missing")
        tname = self._qt(t.tensor_type).name
        if tname not in SUPPORTED_TYPES:
            raise ValueError(
                f"{self.path}: tensor {name} has type {tname}, which hybrid_moe does "
                f"not load; supported expert types: {', '.join(SUPPORTED_TYPES)}"
            )
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGML ne[] -> numpy order
        if shape != want_shape:
            raise ValueError(
                f"{self.path}: tensor {name} has shape {list(shape)} (outermost "
                f"first), expected {list(want_shape)} from the metadata"
            )
        data = t.data
        if tname == "BF16":  # uint8 [..., 2 * n_in] -> bfloat16 [..., n_in], no copy
            return torch.from_numpy(data).view(torch.bfloat16), tname
        if tname == "Q8_0":
            return torch.from_numpy(data), tname
        return torch.from_numpy(np.asarray(data, dtype=np.float32)), tname

    def layer(self, n: int) -> ExpertWeights:
        """Block n's routed experts (ValueError if block n has none)."""
        info = self.info
        if n not in info.layout:
            raise ValueError(
                f"{self.path}: block {n} has no routed experts; MoE blocks are {info.moe_layers}"
            )
        e, h, i = info.n_expert, info.hidden, info.intermediate
        shapes = {"gate": (i, h), "up": (i, h), "down": (h, i)}
        mats: dict[str, torch.Tensor] = {}
        types: dict[str, str] = {}
        for p in PROJS:
            if info.layout[n] == "fused":
                name = f"blk.{n}.ffn_{p}_exps.weight"
                mats[p], types[name] = self._tensor(name, (e, *shapes[p]))
            else:
                per = []
                for x in range(e):
                    name = f"blk.{n}.ffn_{p}.{x}.weight"
                    m, types[name] = self._tensor(name, shapes[p])
                    per.append(m)
                mats[p] = torch.stack(per)
        kinds = set(types.values())
        if len(kinds) != 1:
            raise ValueError(
                f"{self.path}: block {n} mixes tensor types {sorted(kinds)}; one "
                f"format per layer is supported ({', '.join(SUPPORTED_TYPES)})"
            )
        kind = kinds.pop()
        fmt = {"BF16": "bf16", "Q8_0": "q8_0"}.get(kind, "f32")
        return ExpertWeights(fmt, mats["gate"], mats["up"], mats["down"])

    def layers(self, which: int | list[int] | None = None) -> dict[int, ExpertWeights]:
        """{block: ExpertWeights} for `which`: one block index, a list of them, or None (every
        MoE block)."""
        if which is None:
            which = self.info.moe_layers
        elif isinstance(which, int) and not isinstance(which, bool):
            which = [which]
        else:
            try:
                which = list(which)
            except TypeError:
                raise TypeError(
                    f"layers must be a block index, a list of them or None, got "
                    f"{type(which).__name__}"
                ) from None
        for n in which:
            if not isinstance(n, int) or isinstance(n, bool):
                raise TypeError(f"layers must hold block indices (int), got {n!r}")
        return {n: self.layer(n) for n in which}


def load_gguf_experts(
    path: str | os.PathLike[str], layers: int | list[int] | None = None
) -> dict[int, ExpertWeights]:
    """{block index: ExpertWeights} of a GGUF file's MoE blocks (all, one block index, or those in
    `layers`)."""
    return GGUFExperts(path).layers(layers)
