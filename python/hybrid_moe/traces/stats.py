"""Statistics of a routing trace, over its DECODE steps: reuse at t+1, popularity concentration,
and per-layer cache hit-rate curves (LRU and Belady, counted in C++: core/trace_stats.h).

Hit counting (hit_rate_curves): every layer owns its own cache of N experts, empty at the first
decode step; only decode steps are replayed, in order. Each (token, layer, slot) selection of a
decode step is one access; it is a HIT when its expert was resident before that step began. After
a step all its experts are resident (lru, belady) - hence N >= k - or, for belady_bypass, a missed
expert is cached only if that beats keeping some resident (it can run uncached, e.g. on the CPU).
LRU evicts the least recently used expert not used by the current step; Belady the one whose next
use is farthest. rate = hits / selections per layer.
"""

from __future__ import annotations

import numpy as np

from hybrid_moe._native import native
from hybrid_moe.trace_model import RouteTrace

POLICIES = ("lru", "belady", "belady_bypass")


def _decode_view(trace: RouteTrace) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n_dec_tokens, L, k] of the decode steps, token offsets [n_dec_steps + 1])."""
    dec = trace.decode_steps()
    counts = np.diff(trace.step_offsets)[dec]
    starts = trace.step_offsets[dec]
    rows = np.repeat(starts, counts) + (
        np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    if not np.all(trace.computed[rows]):
        raise ValueError("decode steps of this trace have uncomputed (token, layer) rows")
    return np.ascontiguousarray(trace.ids[rows]), np.concatenate([[0], np.cumsum(counts)])


def _membership(trace: RouteTrace) -> np.ndarray:
    """bool [n_dec_steps, L, E]: expert e used by layer l in decode step s (any token)."""
    ids, off = _decode_view(trace)
    step_of_token = np.repeat(np.arange(off.shape[0] - 1), np.diff(off))
    m = np.zeros((off.shape[0] - 1, trace.n_layer, trace.n_expert), dtype=bool)
    s = np.broadcast_to(step_of_token[:, None, None], ids.shape)
    lay = np.broadcast_to(np.arange(trace.n_layer)[None, :, None], ids.shape)
    m[s.reshape(-1), lay.reshape(-1), ids.reshape(-1)] = True
    return m


def reuse_at_next(trace: RouteTrace) -> np.ndarray:
    """float64 [L]: share of the experts a layer used in decode step t that it uses again in
    decode step t+1 (distinct experts per step; pairs of consecutive decode steps only)."""
    m = _membership(trace)
    dec = trace.decode_steps()
    adjacent = np.flatnonzero(np.diff(dec) == 1)  # decode step i and i+1 are consecutive steps
    if adjacent.size == 0:
        raise ValueError("trace has fewer than two consecutive decode steps: no reuse defined")
    used = m[adjacent].sum(axis=(0, 2))
    again = (m[adjacent] & m[adjacent + 1]).sum(axis=(0, 2))
    return again / np.maximum(used, 1)


def top_share(trace: RouteTrace, top: int = 16, window: int | None = None) -> np.ndarray:
    """float64 [L]: share of a layer's decode selections held by its `top` most used experts.
    window=None: over the whole run; window=W: per block of W decode tokens (each block ranks its
    own top experts), averaged over full blocks."""
    ids, _ = _decode_view(trace)
    n, L, k = ids.shape
    if window is None:
        window = n
    if window < 1 or n < window:
        raise ValueError(f"window must be in [1, {n}] decode tokens, got {window}")
    nb = n // window
    blocks = ids[: nb * window].reshape(nb, window, L, k).transpose(0, 2, 1, 3).reshape(nb, L, -1)
    counts = np.zeros((nb, L, trace.n_expert), dtype=np.int64)
    b = np.broadcast_to(np.arange(nb)[:, None, None], blocks.shape)
    lay = np.broadcast_to(np.arange(L)[None, :, None], blocks.shape)
    np.add.at(counts, (b.reshape(-1), lay.reshape(-1), blocks.reshape(-1)), 1)
    counts.sort(axis=2)
    shares = counts[:, :, ::-1][:, :, :top].sum(axis=2) / (window * k)
    return shares.mean(axis=0)


def hit_rate_curves(trace: RouteTrace, sizes=(8, 16, 32, 64), policies=("lru", "belady")) -> dict:
    """Per-layer hit rates of each policy at each cache size (see the module docstring).

    Returns {"sizes": int array [n_sizes], "selections": int array [L],
             "<policy>": float64 [L, n_sizes] hit rate, "<policy>_hits": int64 [L, n_sizes]}
    for every policy in `policies` ("lru", "belady", "belady_bypass")."""
    sizes = [int(s) for s in sizes]
    for p in policies:
        if p not in POLICIES:
            raise ValueError(f"unknown policy {p!r}: expected one of {POLICIES}")
    if any(s < 1 for s in sizes):
        raise ValueError(f"cache sizes must be >= 1, got {sizes}")
    ids, off = _decode_view(trace)
    out: dict = {"sizes": np.array(sizes)}
    for p in policies:
        r = native.layer_cache_hits(ids, off, trace.n_expert, sizes, p)  # [L, n_sizes, 2]
        out[f"{p}_hits"] = r[:, :, 0]
        out["selections"] = r[:, 0, 1]
        out[p] = r[:, :, 0] / np.maximum(r[:, :, 1], 1)
    return out
