"""Speed of the trace tools: the synthetic generator and the per-layer hit-rate curves.

Measures, median of --repeats:
  * synthetic_trace(preset, tokens) (C++ router + Python calibration) against a plain numpy
    reference router (per-token Gumbel top-k over all experts, vectorised over layers: the same
    kind of routing model, the generator's first implementation) on the same shape;
  * hit_rate_curves(trace, sizes=(8,16,32,64), policies=("lru","belady")) (C++) against a plain
    Python LRU (OrderedDict) over the same decode steps, N=16, timed on --py-layers layers and
    scaled to all layers.

    python bench/bench_traces.py [--preset qwen3-30b-a3b] [--tokens 10000] [--out bench_traces.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import OrderedDict

import numpy as np

from hybrid_moe.presets import get_preset
from hybrid_moe.traces import hit_rate_curves, synthetic_trace


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def numpy_reference_router(n_layer: int, n_expert: int, k: int, n_tokens: int, seed: int):
    """Baseline: per token, AR(1) hot set + Gumbel top-k over all experts, keep probability 0.4."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_layer, n_expert), dtype=np.float32)
    ids = np.empty((n_tokens, n_layer, k), dtype=np.int32)
    rows = np.arange(n_layer)[:, None]
    prev = None
    for t in range(n_tokens):
        z = 0.985 * z + 0.17 * rng.standard_normal((n_layer, n_expert), dtype=np.float32)
        score = 2.3 * z - np.log(
            rng.standard_exponential((n_layer, n_expert), dtype=np.float32) + 1e-30
        )
        if prev is not None:
            score[rows, prev] += np.where(rng.random((n_layer, k)) < 0.4, 1e4, 0.0)
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        ids[t] = top
        prev = top
    return ids


def python_lru_hits(layer_ids: np.ndarray, capacity: int) -> int:
    """Baseline: one layer's LRU over one-token steps, same counting rule as trace_stats.h."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for step in layer_ids.tolist():
        hits += sum(e in cache for e in step)
        for e in step:
            if e in cache:
                cache.move_to_end(e)
            else:
                if len(cache) == capacity:
                    for victim in cache:
                        if victim not in step:
                            del cache[victim]
                            break
                cache[e] = None
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--py-layers", type=int, default=4, help="layers the Python LRU baseline runs")
    ap.add_argument("--out", default="bench_traces.json")
    args = ap.parse_args()
    p = get_preset(args.preset)

    trace = synthetic_trace(args.preset, args.tokens, seed=0)
    gen = median_time(lambda: synthetic_trace(args.preset, args.tokens, seed=0), args.repeats)
    ref = median_time(
        lambda: numpy_reference_router(p.n_layer, p.n_expert, p.top_k, args.tokens, 0),
        max(1, args.repeats // 2),
    )
    curves = median_time(
        lambda: hit_rate_curves(trace, (8, 16, 32, 64), ("lru", "belady")), args.repeats
    )
    native16 = hit_rate_curves(trace, (16,), ("lru",))["lru_hits"][:, 0]
    n_py = min(args.py_layers, p.n_layer)
    t0 = time.perf_counter()
    py_hits = [python_lru_hits(trace.ids[:, lay, :], 16) for lay in range(n_py)]
    py_lru_all_layers = (time.perf_counter() - t0) * p.n_layer / n_py
    assert py_hits == native16[:n_py].tolist(), "Python LRU baseline disagrees with C++"
    native_lru16 = median_time(lambda: hit_rate_curves(trace, (16,), ("lru",)), args.repeats)

    res = {
        "preset": args.preset,
        "tokens": args.tokens,
        "layers": p.n_layer,
        "machine": platform.processor() or platform.machine(),
        "synthetic_s": gen,
        "numpy_reference_router_s": ref,
        "generator_speedup": ref / gen,
        "hit_rate_curves_s (lru+belady x 4 sizes)": curves,
        "lru16_native_s": native_lru16,
        "lru16_python_s (scaled)": py_lru_all_layers,
        "lru_speedup": py_lru_all_layers / native_lru16,
    }
    print(json.dumps(res, indent=1))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
