"""Model presets: the MoE shapes of public models, and the parameters of their synthetic traces.

Shapes are from the models' public configs (config.json): num_hidden_layers minus dense layers,
num_experts / n_routed_experts, num_experts_per_tok, hidden_size, moe_intermediate_size.
expert_bytes(format) mirrors csrc/core/weight_format.h (weight bytes, no alignment padding):
    bf16: 3 * H * I * 2 bytes        q8_0: 3 * H * I / 32 * 34 bytes
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMATS = ("bf16", "q8_0")


@dataclass(frozen=True)
class SyntheticParams:
    """How synthetic_trace() routes tokens for one model (see hybrid_moe/traces/synthetic.py).

    reuse_knots: (layer fraction in [0, 1], target reuse at t+1) points, linearly interpolated
        over layers: the probability an expert of step t is used again at t+1.
    top16_share / dead: per-layer long-run popularity: share of selections held by the 16 most
        used experts, and experts never used. Empty: `default_top16_share` and 0 for all layers.
    drift: AR(1) coefficient per decode token of the hot-set log-boost (closer to 1 = slower).
    hot_sigma: standard deviation of that log-boost (larger = more skew over short windows).
    """

    reuse_knots: tuple = (
        (0.0, 0.06),
        (0.03, 0.23),
        (0.15, 0.40),
        (0.45, 0.48),
        (0.65, 0.58),
        (0.85, 0.43),
        (1.0, 0.28),
    )
    top16_share: tuple = ()
    dead: tuple = ()
    default_top16_share: float = 0.42
    drift: float = 0.985
    hot_sigma: float = 2.3
    hot_period: int = 4  # tokens between refreshes of one expert's hot value (C++ router)
    cold_mix: float = 0.02  # share of fresh picks drawn from long-run popularity, not the hot set
    hot_ref_reuse: float = 0.35  # layers whose target reuse is lower get a weaker hot set
    share_gain: float = 1.15  # popularity is built for top16_share * share_gain (the hot set and
    # reuse flatten the realised long-run share; the gain compensates)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    n_layer: int  # MoE layers
    n_expert: int  # routed experts per layer
    top_k: int
    hidden: int  # H
    intermediate: int  # I, per expert
    n_shared: int = 0  # shared experts (always computed, not routed)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)

    def expert_bytes(self, fmt: str = "bf16") -> int:
        """Bytes of one routed expert's weights (gate, up, down) in `fmt` ('bf16' | 'q8_0')."""
        hi = 3 * self.hidden * self.intermediate
        if fmt == "bf16":
            return hi * 2
        if fmt == "q8_0":
            if self.hidden % 32 or self.intermediate % 32:
                raise ValueError(
                    f"q8_0 needs hidden and intermediate multiples of 32, got "
                    f"{self.hidden}, {self.intermediate}"
                )
            return hi // 32 * 34
        raise ValueError(f"unknown weight format {fmt!r}: expected one of {FORMATS}")

    def reuse_target(self) -> np.ndarray:
        """float64 [n_layer]: the synthetic generator's target reuse at t+1 per layer."""
        xs, ys = zip(*self.synthetic.reuse_knots, strict=True)
        frac = np.arange(self.n_layer) / max(self.n_layer - 1, 1)
        return np.interp(frac, xs, ys)

    def top16_share(self) -> np.ndarray:
        s = self.synthetic
        if s.top16_share:
            return np.asarray(s.top16_share, dtype=np.float64)
        return np.full(self.n_layer, s.default_top16_share)


# From scripts/derive_qwen3_popularity.py over ../shared/traces/qwen3-30b-a3b.coactivation.json.
QWEN3_30B_TOP16_SHARE = (
    0.288,
    0.34,
    0.382,
    0.404,
    0.425,
    0.428,
    0.454,
    0.445,
    0.406,
    0.451,
    0.427,
    0.408,
    0.447,
    0.419,
    0.408,
    0.4,
    0.421,
    0.388,
    0.458,
    0.43,
    0.428,
    0.431,
    0.438,
    0.418,
    0.462,
    0.42,
    0.425,
    0.444,
    0.408,
    0.393,
    0.449,
    0.435,
    0.419,
    0.411,
    0.425,
    0.429,
    0.44,
    0.391,
    0.403,
    0.432,
    0.426,
    0.404,
    0.407,
    0.427,
    0.43,
    0.408,
    0.406,
    0.429,
)
QWEN3_30B_DEAD_EXPERTS = (
    2,
    0,
    2,
    4,
    2,
    1,
    1,
    0,
    0,
    1,
    1,
    1,
    0,
    2,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    1,
    1,
    1,
    0,
    2,
    1,
    0,
    5,
    6,
    6,
    6,
    6,
    8,
    7,
    8,
)

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "qwen3-30b-a3b",
            48,
            128,
            8,
            2048,
            768,
            synthetic=SyntheticParams(
                top16_share=QWEN3_30B_TOP16_SHARE, dead=QWEN3_30B_DEAD_EXPERTS
            ),
        ),
        ModelPreset("qwen3-235b-a22b", 94, 128, 8, 4096, 1536),
        ModelPreset("deepseek-v3", 58, 256, 8, 7168, 2048, n_shared=1),
        ModelPreset(
            "mixtral-8x7b",
            32,
            8,
            2,
            4096,
            14336,
            synthetic=SyntheticParams(default_top16_share=1.0),
        ),
        ModelPreset("gpt-oss-120b", 36, 128, 4, 2880, 2880),
    )
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]
