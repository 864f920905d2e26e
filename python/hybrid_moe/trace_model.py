"""The in-memory routing trace every part of hybrid-moe exchanges (readers, generator, simulator).

A trace is, per step (one forward pass of one or more tokens) and per MoE layer, the expert ids
and router weights each token selected. Tokens of all steps are stacked along one axis:

    ids      int32   [N, L, k]   expert id per (token, layer, slot), 0 <= id < n_expert
    weights  float32 [N, L, k]   router weight of that choice (renormalised over k)
    step_offsets int64 [S + 1]   tokens of step s are rows step_offsets[s]:step_offsets[s+1]
    phase    int8    [S]         0 = prefill, 1 = decode
    computed bool    [N, L]      False where the source engine skipped a (token, layer): llama.cpp
                                 runs the last layer of a prefill batch only for the output token.
                                 Such rows hold ids 0..k-1 with weight 0 and must not be counted.
                                 All True unless a file says otherwise.

File formats (route_trace v1 CSV, native .npz) and the synthetic generator live in traces.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PREFILL, DECODE = 0, 1


@dataclass
class RouteTrace:
    n_layer: int
    n_expert: int
    top_k: int
    ids: np.ndarray
    weights: np.ndarray
    step_offsets: np.ndarray
    phase: np.ndarray
    model: str = ""
    # Bytes of one expert per layer, as the source recorded them (0 when unknown).
    expert_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # [N, L] bool; empty means every (token, layer) was computed.
    computed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int32)
        self.weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        self.step_offsets = np.ascontiguousarray(self.step_offsets, dtype=np.int64)
        self.phase = np.ascontiguousarray(self.phase, dtype=np.int8)
        if self.expert_bytes.size == 0:
            self.expert_bytes = np.zeros(self.n_layer, dtype=np.int64)
        self.expert_bytes = np.ascontiguousarray(self.expert_bytes, dtype=np.int64)
        if self.computed.size == 0:
            self.computed = np.ones(self.ids.shape[:2], dtype=bool)
        self.computed = np.ascontiguousarray(self.computed, dtype=bool)
        self.validate()

    @property
    def n_steps(self) -> int:
        return int(self.phase.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])

    def step_tokens(self, s: int) -> slice:
        return slice(int(self.step_offsets[s]), int(self.step_offsets[s + 1]))

    def decode_steps(self) -> np.ndarray:
        return np.flatnonzero(self.phase == DECODE)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistency."""
        if min(self.n_layer, self.n_expert, self.top_k) < 1:
            raise ValueError(
                f"trace needs n_layer, n_expert, top_k >= 1, got "
                f"{self.n_layer}, {self.n_expert}, {self.top_k}"
            )
        if self.top_k > self.n_expert:
            raise ValueError(f"top_k={self.top_k} exceeds n_expert={self.n_expert}")
        want = (self.n_tokens, self.n_layer, self.top_k)
        if self.ids.ndim != 3 or self.ids.shape[1:] != want[1:]:
            raise ValueError(
                f"ids must have shape [N, {self.n_layer}, {self.top_k}], got {list(self.ids.shape)}"
            )
        if self.weights.shape != self.ids.shape:
            raise ValueError(
                f"weights shape {list(self.weights.shape)} != ids shape {list(self.ids.shape)}"
            )
        if self.phase.ndim != 1 or self.step_offsets.shape != (self.n_steps + 1,):
            raise ValueError(
                f"step_offsets must have {self.n_steps + 1} entries (steps + 1), got "
                f"{self.step_offsets.shape[0]}"
            )
        if (
            self.step_offsets[0] != 0
            or self.step_offsets[-1] != self.n_tokens
            or np.any(np.diff(self.step_offsets) < 1)
        ):
            raise ValueError(
                "step_offsets must start at 0, end at the token count and give "
                "every step at least one token"
            )
        if not np.all((self.phase == PREFILL) | (self.phase == DECODE)):
            raise ValueError("phase must be 0 (prefill) or 1 (decode)")
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= self.n_expert):
            bad = int(self.ids.min() if self.ids.min() < 0 else self.ids.max())
            raise ValueError(f"expert id {bad} out of range [0, {self.n_expert})")
        if self.expert_bytes.shape != (self.n_layer,):
            raise ValueError(
                f"expert_bytes must have {self.n_layer} entries, got {self.expert_bytes.shape[0]}"
            )
        if self.computed.shape != self.ids.shape[:2]:
            raise ValueError(
                f"computed must have shape [N, {self.n_layer}] = "
                f"{list(self.ids.shape[:2])}, got {list(self.computed.shape)}"
            )
