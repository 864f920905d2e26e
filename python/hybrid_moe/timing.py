"""Timing helpers shared by `hybrid-moe calibrate` and `hybrid-moe bench decode`.

All times are microseconds. Host timings use time.perf_counter around a call that returns when its
work is done (CPU kernels, or a CUDA call followed by synchronize()); device timings use CUDA
events around `iters` back-to-back calls on the current stream.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_wall_us(
    fn: Callable[[int], object], reps: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Run fn(i) warmup times untimed, then reps times; (median us, every sample in us).
    fn gets the repeat index so it can rotate inputs (e.g. through memory larger than the L3)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(warmup + i)
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples), samples


def cuda_events_us(
    fn: Callable[[int], object], iters: int, reps: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median over reps of the mean device time of `iters` back-to-back fn(i) calls (CUDA events
    on the current stream); (median us per call, every rep's mean in us)."""
    import torch

    if reps < 1 or iters < 1:
        raise ValueError(f"reps and iters must be >= 1, got {reps}, {iters}")
    k = 0
    for _ in range(warmup):
        fn(k)
        k += 1
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn(k)
            k += 1
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) * 1e3 / iters)
    return statistics.median(samples), samples


def percentile(values, q: float) -> float:
    """q-th percentile (0..100) with linear interpolation; values non-empty."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty list")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
