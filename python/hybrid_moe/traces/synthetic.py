"""Seeded, deterministic synthetic routing traces for the model presets (hybrid_moe.presets).

[NOTE] The routing model, per layer l (each layer an independent random stream):
  * long-run popularity: log p_l[e] = sigma_l * q[e], q = standard-normal quantiles of 128 evenly
    spaced probabilities, permuted per layer (seeded); sigma_l is solved by bisection so the top-16
    experts hold the preset's top16_share[l] of p_l; the preset's `dead` experts get p = 0.
  * hot set that drifts: a log-boost z_l[e] follows an AR(1) process per token,
    z <- drift * z + sqrt(1 - drift^2) * N(0, 1), scaled by hot_sigma: over short windows a few
    experts are much likelier than their long-run share, and the favourites change over time;
    fresh picks come from the mixture cold_mix * p_l + (1 - cold_mix) * (p_l boosted by the hot
    set), the cold part giving the long tail of rarely reused experts.
  * reuse: each expert of token t is kept for token t+1 with probability r_l; the other slots are
    filled by sampling without replacement from the mixture below. r_l is
    solved from the preset's target reuse R_l: two short seeded pilot runs measure the accidental
    re-selection a_l and set r_l = (R_l - a_l) / (1 - a_l).
  * router weights: softmax over the selected experts of log-probability + Gumbel noise, kept
    experts getting +1 (a re-chosen hot expert tends to weigh more); slots are ordered by weight,
    largest first, like a real top-k router.
  The per-token loop runs in C++ (csrc/core/synthetic_route.h; z refreshed every hot_period
  tokens per expert, staggered); this module builds the per-layer parameters and calibrates.
Prefill: the first prefill_tokens tokens come from the same process and are grouped into steps of
prefill_chunk tokens (phase 0); then one decode token per step (phase 1).
The same (preset, sizes, seed) always gives the same trace (numpy PCG64 for the set-up, the C++
router's own xoshiro256** streams, seeded from it, for the tokens).
"""

from __future__ import annotations

import numpy as np

from hybrid_moe._native import native
from hybrid_moe.presets import ModelPreset, get_preset
from hybrid_moe.trace_model import DECODE, PREFILL, RouteTrace

_PILOT = 256  # tokens per pilot run when solving the retention probabilities


def _popularity(preset: ModelPreset, rng: np.random.Generator) -> np.ndarray:
    """log-popularity [L, E] (-inf for dead experts), each row matching its top-16 share."""
    from statistics import NormalDist

    L, E = preset.n_layer, preset.n_expert
    q = np.array([NormalDist().inv_cdf((i + 0.5) / E) for i in range(E)])[::-1]  # descending
    shares = preset.top16_share()
    dead = preset.synthetic.dead or (0,) * L
    out = np.empty((L, E))
    for lay in range(L):
        live = E - int(dead[lay])
        qs = q[:live] - q[:live].mean()
        if live <= 16:
            sigma = 0.5  # every expert is in the top 16: the share says nothing
        else:
            lo, hi = 0.0, 8.0
            for _ in range(50):
                sigma = 0.5 * (lo + hi)
                w = np.exp(sigma * qs)
                share = w[:16].sum() / w.sum()
                want = min(shares[lay] * preset.synthetic.share_gain, 0.95)
                lo, hi = (sigma, hi) if share < want else (lo, sigma)
        row = np.full(E, -np.inf)
        row[:live] = sigma * qs
        out[lay] = row[rng.permutation(E)]
    return out


def _route(
    p: ModelPreset,
    popularity: np.ndarray,
    hot: np.ndarray,
    keep: np.ndarray,
    n_tokens: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """ids int32 [n, L, k], weights float32 [n, L, k] from the C++ router
    (csrc/core/synthetic_route.h)."""
    s = p.synthetic
    return native.synthetic_route(
        popularity,
        hot.astype(np.float32),
        keep.astype(np.float32),
        p.top_k,
        n_tokens,
        s.cold_mix,
        s.drift,
        s.hot_period,
        seed,
    )


def _measured_reuse(ids: np.ndarray) -> np.ndarray:
    """[L] share of token t's experts used again at t+1 (one token per step)."""
    n, _, k = ids.shape
    a = np.sort(ids[:-1], axis=2)
    b = ids[1:]
    hits = (a[..., :, None] == b[..., None, :]).any(axis=3).sum(axis=(0, 2))
    return hits / ((n - 1) * k)


def synthetic_trace(
    preset: str,
    decode_tokens: int,
    seed: int = 0,
    prefill_tokens: int = 0,
    prefill_chunk: int = 512,
) -> RouteTrace:
    """A synthetic RouteTrace for a model preset: prefill_tokens prompt tokens in steps of
    prefill_chunk tokens, then decode_tokens one-token decode steps. Deterministic in seed."""
    p = get_preset(preset)
    if decode_tokens < 0 or prefill_tokens < 0 or decode_tokens + prefill_tokens < 1:
        raise ValueError(
            f"decode_tokens and prefill_tokens must be >= 0 with at least one token, "
            f"got {decode_tokens}, {prefill_tokens}"
        )
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1 token, got {prefill_chunk}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    s = p.synthetic
    k = p.top_k
    setup_rng = np.random.default_rng([int(seed), 1])
    logp = _popularity(p, setup_rng)
    popularity = np.exp(logp - logp.max(axis=1, keepdims=True))
    popularity = (popularity / popularity.sum(axis=1, keepdims=True)).astype(np.float32)
    target = p.reuse_target()
    # Layers with little reuse also have little short-term skew: scale the hot set down there.
    hot = s.hot_sigma * np.clip(target / s.hot_ref_reuse, 0.1, 1.0)
    keep = np.zeros(p.n_layer)
    base_seed = int(setup_rng.integers(0, 2**63))
    for i in range(2):  # pilot runs: measure accidental reuse, solve the retention probability
        pilot = _route(p, popularity, hot, keep, _PILOT, base_seed + i)[0]
        measured = _measured_reuse(pilot)
        accidental = np.clip((measured - keep) / np.maximum(1 - keep, 1e-9), 0.0, 0.99)
        keep = np.clip((target - accidental) / (1 - accidental), 0.0, 0.99)
    n = prefill_tokens + decode_tokens
    ids, weights = _route(p, popularity, hot, keep, n, base_seed + 2)
    pre_steps = np.arange(0, prefill_tokens, prefill_chunk)
    step_offsets = np.concatenate([pre_steps, np.arange(prefill_tokens, n + 1)]).astype(np.int64)
    phase = np.concatenate([np.full(pre_steps.size, PREFILL), np.full(decode_tokens, DECODE)])
    eb = np.full(p.n_layer, p.expert_bytes("bf16"), dtype=np.int64)
    return RouteTrace(
        n_layer=p.n_layer,
        n_expert=p.n_expert,
        top_k=k,
        ids=ids,
        weights=weights,
        step_offsets=step_offsets,
        phase=phase.astype(np.int8),
        model=f"synthetic:{p.name}:seed={seed}",
        expert_bytes=eb,
    )
