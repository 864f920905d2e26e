"""Calibration: measure this machine's CPU, GPU and copy costs and fit a hardware profile.

    from hybrid_moe.calibrate import calibrate
    profile = calibrate(quick=True)          # dict in the hybrid-moe-profile/1 schema
    hybrid_moe.cost_model.load_profile(profile)

[NOTE] What is measured and how the profile's constants come out of it (cost model in
csrc/core/cost_model.h, schema in hybrid_moe/profiles/README.md). Expert shape: Qwen3-30B-A3B
(H=2048, I=768) unless told otherwise; every expert byte range is random but valid (bf16 normals,
Q8_0 blocks with small fp16 scales).
  DRAM      the pool's pinned workers stream `dram_mib` MiB (cpu/dram_read.h) -> cpu.dram_read_gbps.
  CPU       the project's CPU MoE layer (native.cpu_moe_layer) over E experts that each get n tokens
            (n = 1, 4, 16, 64), experts taken from a pool of `pool_mib` MiB visited round-robin in
            groups of E, so a call's experts were evicted from the L3 by the calls between (DRAM-
            bound, like decode). Per expert time = layer time / E. A layer of E tiny experts
            (H=128, I=64, cache resident) gives cpu.expert_overhead_us. Then per format a
            least-squares fit of t(n) = overhead + max(m, f * n) (fit_roofline) gives m (the
            memory term: cpu_efficiency = bytes / m / dram_read_gbps) and f (cpu_tflops = flops per
            token / f).
  GPU       the decode kernel (gpu.launch_decode_raw, CUDA events) for E = 1, 4, 16 experts at
            n = 1, then E = 16 at n = 1, 4, 16 (decode) and 64, 256 (prefill path, host clock after
            synchronize). fit_gpu_decode fits layer_overhead + E * (expert_overhead + max(bytes /
            vram, n * flops / gpu_tflops)) to all decode rows of both formats at once (least
            squares of log(fit / measured)). The decode kernel re-reads an expert's weights for
            each of its tokens, so its time is ~linear in n from n = 1 and gpu_tflops comes out
            as its effective rate (a few TFLOP/s); the prefill path (a fixed ~100+ us plus a GEMM
            rate) has no term in cost_model.h, so t_gpu(n) over-predicts it at n >= 64; its own
            line is kept in fit.gpu.<fmt>.prefill_line.
  copy      pinned host -> device cudaMemcpyAsync (torch copy_, non_blocking) of sizes from 256 KiB
            to 64 MiB and the two expert sizes, `copy_batch` copies between CUDA events from
            distinct buffers; t = latency + bytes / bandwidth by least squares.
  layer_fixed_us (attention and the rest of a layer) is model work outside the experts: it is
            taken from the base profile, and the JSON says so.
Without CUDA the gpu and copy sections and gpu_tflops come from the base profile (`base`), and
`calibration.sources` says so. The raw measurements and each fit are kept in the JSON.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid_moe import cost_model as _cost_model
from hybrid_moe.cost_model import FORMATS, SCHEMA, load_profile
from hybrid_moe.timing import cuda_events_us, median_wall_us

DEFAULT_HIDDEN, DEFAULT_INTERMEDIATE = 2048, 768  # Qwen3-30B-A3B expert
TINY_HIDDEN, TINY_INTERMEDIATE = 128, 64  # cache-resident experts: the CPU dispatch overhead
DEFAULT_BASE = "consumer-4090"


# ----------------------------------------------------------------------------------- fits
@dataclass
class RooflineFit:
    """t(n) = overhead_us + max(mem_us, us_per_token * n), microseconds per expert."""

    overhead_us: float
    mem_us: float
    us_per_token: float
    compute_bound_points: int  # points the fit puts on the FLOP-bound side
    rms_error_us: float

    def predict(self, n: float) -> float:
        return self.overhead_us + max(self.mem_us, self.us_per_token * n)


def fit_roofline(
    ns: Sequence[float], ts: Sequence[float], overhead_us: float | None = None
) -> RooflineFit:
    """Least-squares fit of t = a + max(m, f * n) to (n, t) points (n > 0, t in us).

    Tries every split of the points sorted by n into a memory-bound prefix (t = a + m) and a
    FLOP-bound suffix (t = a + f * n), solves each part by linear least squares (a fixed when
    `overhead_us` is given, else fitted from a suffix of >= 2 points), and keeps the split whose
    parameters give the smallest squared error under the full max() model. With no FLOP-bound
    point, f is the largest value the data allow (f * n_max = m): a lower bound on the FLOP rate.
    """
    n = np.asarray(ns, dtype=np.float64)
    t = np.asarray(ts, dtype=np.float64)
    if n.ndim != 1 or n.shape != t.shape or n.size < 2:
        raise ValueError(
            f"fit_roofline needs >= 2 (n, t) points of equal length, got {n.shape}, {t.shape}"
        )
    if np.any(n <= 0) or not np.all(np.isfinite(t)):
        raise ValueError("fit_roofline: token counts must be > 0 and times finite")
    if overhead_us is not None and overhead_us < 0:
        raise ValueError(f"overhead_us must be >= 0, got {overhead_us}")
    order = np.argsort(n, kind="stable")
    n, t = n[order], t[order]
    best: RooflineFit | None = None
    # Points [0, j) memory-bound, [j, N) FLOP-bound; fewest FLOP-bound first (ties keep those).
    for j in range(n.size, 0, -1):
        tail_n, tail_t = n[j:], t[j:]
        if overhead_us is not None:
            a = overhead_us
            f = (
                float(np.dot(tail_n, tail_t - a) / np.dot(tail_n, tail_n))
                if tail_n.size
                else math.nan
            )
        elif tail_n.size >= 2:
            f, a = (float(v) for v in np.polyfit(tail_n, tail_t, 1))
            a = max(a, 0.0)
        elif tail_n.size == 0:
            a, f = 0.0, math.nan
        else:
            continue
        m = max(float(np.mean(t[:j])) - a, 0.0)
        if not np.isfinite(f) or f <= 0:
            f = m / float(n[-1]) if m > 0 else 0.0
            bound = 0
        else:
            bound = int(tail_n.size)
        pred = a + np.maximum(m, f * n)
        rms = float(np.sqrt(np.mean((pred - t) ** 2)))
        if best is None or rms < best.rms_error_us - 1e-12:
            best = RooflineFit(a, m, f, bound, rms)
    assert best is not None
    return best


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares y = intercept + slope * x with intercept >= 0 (refit through the origin when
    the free fit's intercept is negative). Returns (intercept, slope)."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fit_line needs >= 2 points with at least two distinct x")
    slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    if intercept < 0:
        intercept, slope = 0.0, float(np.dot(x, y) / np.dot(x, x))
    return intercept, slope


def fit_gpu_decode(
    rows: Sequence[dict], formats: Sequence[str], ebytes: dict[str, int], flops_per_token: float
) -> dict[str, Any]:
    """The GPU constants of cost_model.h from measured layer times (rows of measure_gpu).

    Model of one layer: t = L + E * (g + max(B_fmt * inv_bw, n * f_fmt)) with L the layer
    overhead, g the per expert overhead, inv_bw = 1 / VRAM bandwidth (us per byte), f_fmt the us
    per token of the FLOP term (gpu_tflops = flops_per_token / f_fmt). It is fitted to every
    decode-kernel row at once (each format's E-line at n = 1 and its n-line at E = 16) by least
    squares of the relative error (t_fit - t) / t, so the 600 us points do not outweigh the 20 us
    ones. Given which rows are memory-bound (for each format a prefix of its token counts) the
    model is linear in (L, g, inv_bw, f_*): every such split is solved, with L and g free or
    fixed at 0 (they must be >= 0), and the one with the smallest error under the full max()
    model is kept (ties keep the most memory-bound split). What the rows leave open is set to
    the bound they allow: with no memory-bound row, inv_bw = min over formats of f * n_min / B
    (the lowest bandwidth that keeps every row FLOP-bound); a format with no FLOP-bound decode
    row takes f from its prefill rows (least squares through the origin of the per expert time
    above g against n), capped at m / n_max so its decode rows stay memory-bound.
    The prefill path is not part of the fit otherwise: cost_model.h has one t_gpu(n) curve, and
    the prefill path's cost (a fixed ~100+ us plus a GEMM rate) has no term there.
    """
    dec = [r for r in rows if r["kernel"] == "decode" and r["format"] in formats]
    fmts = [f for f in formats if any(r["format"] == f for r in dec)]
    if len(dec) < 2 or not fmts:
        raise ValueError(f"fit_gpu_decode needs >= 2 decode rows of {list(formats)}")
    t = np.array([r["layer_us"] for r in dec], dtype=np.float64)
    E = np.array([r["experts"] for r in dec], dtype=np.float64)
    n = np.array([r["n"] for r in dec], dtype=np.float64)
    B = np.array([ebytes[r["format"]] for r in dec], dtype=np.float64)
    fi = np.array([fmts.index(r["format"]) for r in dec])
    if np.any(t <= 0) or np.any(E < 1) or np.any(n < 1):
        raise ValueError("fit_gpu_decode: layer_us must be > 0, experts and n >= 1")
    ns = [sorted({float(v) for v in n[fi == k]}) for k in range(len(fmts))]
    P = 3 + len(fmts)  # L, g, inv_bw, f per format

    def predict(p: np.ndarray) -> np.ndarray:
        return p[0] + E * (p[1] + np.maximum(B * p[2], n * p[3 + fi]))

    best: tuple[float, np.ndarray, tuple[int, ...]] | None = None
    # Splits: format k's first j_k token counts memory-bound; most memory-bound first.
    for split in itertools.product(*(range(len(v), -1, -1) for v in ns)):
        mem = np.array(
            [n[i] <= (ns[fi[i]][split[fi[i]] - 1] if split[fi[i]] else 0.0) for i in range(t.size)]
        )
        A = np.zeros((t.size, P))
        A[:, 0], A[:, 1] = 1.0, E
        A[mem, 2] = (E * B)[mem]
        for i in np.flatnonzero(~mem):
            A[i, 3 + fi[i]] = E[i] * n[i]
        for fixed in ((), (0,), (1,), (0, 1)):
            act = [c for c in range(P) if c not in fixed and np.any(A[:, c])]
            Aw = A[:, act] / t[:, None]  # relative error: rows divided by the measured time
            if np.linalg.matrix_rank(Aw) < len(act):
                continue
            sol = np.linalg.lstsq(Aw, np.ones(t.size), rcond=None)[0]
            for _ in range(8):  # Gauss-Newton on log(fit / t), from the relative-error solution
                fit_t = A[:, act] @ sol
                if np.any(fit_t <= 0):
                    break
                step = np.linalg.lstsq(
                    A[:, act] / fit_t[:, None], 1.0 + np.log(t / fit_t), rcond=None
                )[0]
                if np.allclose(step, sol, rtol=1e-12, atol=0):
                    break
                sol = step
            p = np.full(P, np.nan)
            p[list(fixed)] = 0.0
            p[act] = sol
            if np.any(p[[c for c in act if c >= 2]] <= 0) or np.any(p[[0, 1]] < -1e-9):
                continue
            p[:2] = np.maximum(p[:2], 0.0)
            if np.isnan(p[2]):  # no memory-bound row: the lowest bandwidth keeping all FLOP-bound
                p[2] = min(
                    p[3 + k] * ns[k][0] / ebytes[f] for k, f in enumerate(fmts) if split[k] == 0
                )
            for k, f in enumerate(fmts):  # no FLOP-bound row: the largest f the rows allow
                if np.isnan(p[3 + k]):
                    p[3 + k] = ebytes[f] * p[2] / ns[k][-1]
            err = float(np.sqrt(np.mean(np.log(predict(p) / t) ** 2)))
            # A split must beat the best so far by more than numerical noise (rms log errors of
            # exact data are ~1e-10 and vary with the LAPACK build); ties keep the more
            # memory-bound split, found first.
            if best is None or err < best[0] - 1e-6:
                best = (err, p, split)
    assert best is not None  # the all-memory-bound split with L = g = 0 always solves
    err, p, split = best
    L, g, inv_bw = float(p[0]), float(p[1]), float(p[2])
    out: dict[str, Any] = {
        "layer_overhead_us": L,
        "expert_overhead_us": g,
        "vram_gbps": 1.0 / inv_bw / 1e3,
        "vram_is_lower_bound": True,  # set below
        "rms_log_error": err,
        "formats": {},
    }
    for k, f in enumerate(fmts):
        us_tok, source = float(p[3 + k]), "decode"
        mem_us = ebytes[f] * inv_bw
        pre = [r for r in rows if r["kernel"] == "prefill" and r["format"] == f]
        mem_n_max = ns[k][split[k] - 1] if split[k] else 0.0  # largest memory-bound n
        info: dict[str, Any] = {
            "flop_bound_decode_points": int(np.sum((fi == k) & (n > mem_n_max)))
        }
        if split[k] == len(ns[k]):  # all decode rows memory-bound: f from the prefill rows
            source = "bound"
            pn = np.array([r["n"] for r in pre], dtype=np.float64)
            py = np.array([(r["layer_us"] - L) / r["experts"] - g for r in pre])
            flop = py > mem_us * (1 + 1e-6)
            if np.any(flop):
                f_pre = float(np.dot(pn[flop], py[flop]) / np.dot(pn[flop], pn[flop]))
                if f_pre < us_tok:
                    us_tok, source = f_pre, "prefill"
        if len(pre) >= 2 and len({r["n"] for r in pre}) >= 2:  # what the prefill path costs
            c0, slope = fit_line([r["n"] * r["experts"] for r in pre], [r["layer_us"] for r in pre])
            info["prefill_line"] = {"fixed_us": c0, "tflops": flops_per_token / slope / 1e6}
        out["formats"][f] = dict(
            info,
            us_per_token=us_tok,
            mem_us=mem_us,
            tflops=flops_per_token / us_tok / 1e6,
            tflops_from=source,
        )
    # The bandwidth is only a lower bound unless some decode row is memory-bound strictly (its
    # memory term above its FLOP term): rows on the boundary fit either way.
    us_tok_of = np.array([out["formats"][fmts[k]]["us_per_token"] for k in fi])
    out["vram_is_lower_bound"] = not bool(np.any(B * inv_bw > n * us_tok_of * (1 + 1e-6)))
    return out


# ----------------------------------------------------------------------------------- data
def expert_flops_per_token(hidden: int, intermediate: int) -> float:
    return 2.0 * 3.0 * hidden * intermediate


def runtime_cpu_experts(
    fmt: str, n_experts: int, hidden: int, intermediate: int, seed: int = 0
) -> tuple[torch.Tensor, str]:
    """random_expert_bytes in the row packing a runtime's host store uses on this machine (Q8_0:
    groups of 16 rows with the SIMD kernels), so that the CPU is timed on what decode runs.
    Returns (uint8 [n_experts, stride], packing)."""
    from hybrid_moe import formats
    from hybrid_moe._native import native

    pool = random_expert_bytes(fmt, n_experts, hidden, intermediate, seed)
    packing = str(native.cpu_host_row_packing(fmt))
    if packing != "gguf":
        pool = formats.repack_experts(pool, fmt, hidden, intermediate, "gguf", packing)
    return pool, packing


def random_expert_bytes(
    fmt: str, n_experts: int, hidden: int, intermediate: int, seed: int = 0
) -> torch.Tensor:
    """uint8 [n_experts, stride] of valid random experts in the one-range layout: bf16 values
    +-(1..2) * 2^-7 (no NaN, Inf or denormals), Q8_0 blocks of random int8 with fp16 scale 1e-3."""
    from hybrid_moe._native import native

    lay = dict(native.expert_layout(fmt, hidden, intermediate))
    stride = int(lay["stride"])
    g = torch.Generator().manual_seed(seed)
    if fmt == "bf16":
        r = torch.randint(-(2**15), 2**15, (n_experts, stride // 2), dtype=torch.int16, generator=g)
        r = (r & 0x007F) | (r & -0x8000) | 0x3C00  # keep sign and mantissa, exponent 120
        return r.view(torch.uint8)
    buf = torch.randint(-127, 128, (n_experts, stride), dtype=torch.int8, generator=g).view(
        torch.uint8
    )
    scale = torch.tensor([1e-3], dtype=torch.float16).view(torch.uint8)
    for key in ("gate", "up", "down"):
        off, nbytes = int(lay[f"{key}_offset"]), int(lay[f"{key}_bytes"])
        blocks = buf[:, off : off + nbytes].view(n_experts, -1, 34)
        blocks[:, :, 0] = scale[0]
        blocks[:, :, 1] = scale[1]
    return buf


def _all_experts_routing(
    n_tokens: int, n_experts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every token routed to each of n_experts experts: (token, expert, weight) per pair, so every
    expert gets exactly n_tokens tokens. int32, int32, float32 arrays of n_tokens * n_experts."""
    tok = np.repeat(np.arange(n_tokens, dtype=np.int32), n_experts)
    exp = np.tile(np.arange(n_experts, dtype=np.int32), n_tokens)
    w = np.full(tok.size, 1.0 / n_experts, dtype=np.float32)
    return tok, exp, w


def measure_dram_gbps(threads: int, mib: int = 1024, reps: int = 5) -> float:
    """Host DRAM read bandwidth, GB/s: the CPU pool's pinned workers stream `mib` MiB (median of
    reps; cpu/dram_read.h), the same reader the CPU benchmark divides by."""
    from hybrid_moe._native import native

    return float(native.cpu_dram_read_gbps(max(64, int(mib)), int(threads), int(reps)))


def measure_cpu(
    fmt: str,
    hidden: int,
    intermediate: int,
    tokens: Sequence[int],
    experts_per_call: int,
    pool_mib: float,
    threads: int,
    reps: int,
    tick: Callable[[], None] = lambda: None,
) -> list[dict]:
    """CPU MoE layer times: one row per n with layer_us (median) and expert_us = layer_us / E."""
    from hybrid_moe._native import native

    lay = dict(native.expert_layout(fmt, hidden, intermediate))
    stride = int(lay["stride"])
    groups = max(3, math.ceil(pool_mib * 2**20 / (stride * experts_per_call)))
    pool, packing = runtime_cpu_experts(fmt, groups * experts_per_call, hidden, intermediate, 11)
    base = pool.data_ptr()
    ptrs = [  # uint64 arrays: the native call reads them in place
        np.array(
            [base + (g * experts_per_call + e) * stride for e in range(experts_per_call)],
            dtype=np.uint64,
        )
        for g in range(groups)
    ]
    rows = []
    for n in tokens:
        tok, exp, w = _all_experts_routing(n, experts_per_call)
        x = torch.randn(n, hidden, generator=torch.Generator().manual_seed(n))
        out = torch.zeros(n, hidden)

        def call(i, tok=tok, exp=exp, w=w, x=x, out=out, n=n):
            native.cpu_moe_layer(
                fmt,
                hidden,
                intermediate,
                ptrs[i % groups],
                x.data_ptr(),
                n,
                tok,
                exp,
                w,
                out.data_ptr(),
                threads,
                "",
                packing,
            )

        for i in range(groups):  # first touch of every pool page, untimed
            call(i)
        med, samples = median_wall_us(call, reps, warmup=1)
        rows.append(
            {
                "format": fmt,
                "packing": packing,
                "n": int(n),
                "experts": experts_per_call,
                "layer_us": med,
                "expert_us": med / experts_per_call,
                "samples_us": samples,
            }
        )
        tick()
    return rows


def measure_cpu_overhead(fmt: str, threads: int, reps: int, experts: int = 8) -> dict:
    """Per expert time of a layer of `experts` tiny cache-resident experts, one token: the CPU
    kernel's dispatch cost with almost no bytes or FLOPs."""
    from hybrid_moe._native import native

    H, inter = TINY_HIDDEN, TINY_INTERMEDIATE
    pool, packing = runtime_cpu_experts(fmt, experts, H, inter, seed=5)
    stride = int(dict(native.expert_layout(fmt, H, inter))["stride"])
    ptrs = np.array([pool.data_ptr() + e * stride for e in range(experts)], dtype=np.uint64)
    tok, exp, w = _all_experts_routing(1, experts)
    x, out = torch.randn(1, H), torch.zeros(1, H)
    args = (fmt, H, inter, ptrs, x.data_ptr(), 1, tok, exp, w, out.data_ptr(), threads, "")
    med, samples = median_wall_us(
        lambda i: native.cpu_moe_layer(*args, packing),
        max(reps, 9),
        warmup=3,
    )
    return {
        "format": fmt,
        "packing": packing,
        "experts": experts,
        "hidden": H,
        "intermediate": inter,
        "layer_us": med,
        "expert_us": med / experts,
        "samples_us": samples,
    }


class _GpuPool:
    """One format's random experts in a device slab (filled through the pinned store and mover)."""

    def __init__(self, fmt: str, hidden: int, intermediate: int, n_slots: int):
        from hybrid_moe import gpu

        packed = random_expert_bytes(fmt, n_slots, hidden, intermediate, seed=23)
        self.store = gpu.PinnedExpertStore.from_tensors(packed, fmt, hidden, intermediate)
        self.slab = gpu.DeviceSlab(fmt, hidden, intermediate, n_slots=n_slots)
        self.mover = gpu.Mover(self.store, self.slab)
        for s in range(n_slots):
            self.mover.request_fetch(s, s)
        self.mover.wait_idle()
        self.mover.poll_completions()


def measure_gpu(
    fmt: str,
    hidden: int,
    intermediate: int,
    decode_tokens: Sequence[int],
    prefill_tokens: Sequence[int],
    experts_per_call: int,
    reps: int,
    tick: Callable[[], None] = lambda: None,
) -> list[dict]:
    """GPU layer times: decode kernel at n = 1 for E in {1, 4, E}, then E experts at each n of
    decode_tokens (decode kernel) and prefill_tokens (prefill path)."""
    from hybrid_moe import gpu

    E = experts_per_call
    groups = 4  # rotate over 4 disjoint slot groups: more bytes than the L2 between reuses
    pool = _GpuPool(fmt, hidden, intermediate, groups * E)
    dev = torch.device("cuda")
    rows = []

    def decode_row(n: int, e: int) -> dict:
        tok, exp, w = _all_experts_routing(n, e)
        plans = [
            gpu.device_plan(
                torch.from_numpy(tok).long(),
                torch.from_numpy(exp).long() + g * E,
                torch.from_numpy(w),
                n,
                dev,
            )
            for g in range(groups)
        ]
        x = torch.randn(n, hidden, device=dev).bfloat16()
        h = torch.empty(tok.size, intermediate, dtype=torch.float32, device=dev)
        out = torch.zeros(n, hidden, dtype=torch.float32, device=dev)
        med, samples = cuda_events_us(
            lambda i: gpu.launch_decode_raw(pool.slab, plans[i % groups], x, h, out, tok.size),
            iters=groups * 2,
            reps=reps,
        )
        return {
            "format": fmt,
            "kernel": "decode",
            "n": n,
            "experts": e,
            "layer_us": med,
            "samples_us": samples,
        }

    for e in sorted({1, min(4, E), E}):
        rows.append(decode_row(1, e))
        tick()
    for n in decode_tokens:
        if n != 1:
            rows.append(decode_row(n, E))
            tick()
    for n in prefill_tokens:
        tok, exp, w = _all_experts_routing(n, E)
        x = torch.randn(n, hidden, device=dev).bfloat16()
        out = torch.zeros(n, hidden, dtype=torch.float32, device=dev)
        tk, wt = torch.from_numpy(tok).long(), torch.from_numpy(w)
        slots = [torch.from_numpy(exp).long() + g * E for g in range(groups)]

        def call(i, tk=tk, wt=wt, x=x, out=out, slots=slots):
            gpu.run_prefill(pool.slab, x, tk, slots[i % groups], wt, out=out)
            torch.cuda.synchronize()

        med, samples = median_wall_us(call, reps, warmup=2)
        rows.append(
            {
                "format": fmt,
                "kernel": "prefill",
                "n": n,
                "experts": E,
                "layer_us": med,
                "samples_us": samples,
            }
        )
        tick()
    return rows


def measure_copy(
    sizes: Sequence[int], batch: int, reps: int, tick: Callable[[], None] = lambda: None
) -> list[dict]:
    """Pinned host -> device copies: per copy time (us) of `batch` back-to-back copies of each size
    from distinct pinned buffers into distinct device buffers (CUDA events)."""
    rows = []
    for size in sizes:
        src = torch.empty(batch, size, dtype=torch.uint8).pin_memory()
        src.fill_(1)
        dst = torch.empty(batch, size, dtype=torch.uint8, device="cuda")

        def batch_copy(i, src=src, dst=dst):
            for b in range(batch):
                dst[b].copy_(src[b], non_blocking=True)

        med, samples = cuda_events_us(batch_copy, iters=1, reps=reps, warmup=2)
        rows.append(
            {
                "bytes": int(size),
                "copy_us": med / batch,
                "batch": batch,
                "samples_us": [s / batch for s in samples],
                "gbps": size / (med / batch) / 1e3,
            }
        )
        del src, dst
        tick()
    return rows


# ----------------------------------------------------------------------------------- driver
def default_out_path() -> Path:
    """~/.cache/hybrid_moe/profiles/<hostname>.json: load_profile finds it by <hostname>."""
    return _cost_model.USER_PROFILE_DIR / f"{profile_name()}.json"


def profile_name() -> str:
    host = socket.gethostname().split(".")[0] or "this-machine"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in host)


@dataclass
class CalibrationPlan:
    """How much to measure. quick(): fewer repeats and a smaller pool (well under a minute)."""

    tokens: tuple[int, ...] = (1, 4, 16, 64)
    gpu_decode_tokens: tuple[int, ...] = (1, 4, 16)
    gpu_prefill_tokens: tuple[int, ...] = (64, 256)
    copy_sizes: tuple[int, ...] = (256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)
    experts_per_call: int = 16
    pool_mib: float = 1024.0
    dram_mib: int = 1024
    reps: int = 7
    copy_batch: int = 8

    @classmethod
    def quick(cls) -> CalibrationPlan:
        return cls(pool_mib=640.0, dram_mib=512, reps=4, copy_batch=4)

    def validate(self) -> None:
        if not self.tokens or any(int(n) < 1 for n in self.tokens) or len(set(self.tokens)) < 2:
            raise ValueError(f"tokens must be >= 2 distinct counts >= 1, got {list(self.tokens)}")
        if self.experts_per_call < 1:
            raise ValueError(f"experts_per_call must be >= 1, got {self.experts_per_call}")
        if self.pool_mib <= 0 or self.dram_mib < 1:
            raise ValueError(
                f"pool_mib and dram_mib must be > 0, got {self.pool_mib}, {self.dram_mib}"
            )
        if self.reps < 1 or self.copy_batch < 1:
            raise ValueError(
                f"reps and copy_batch must be >= 1, got {self.reps}, {self.copy_batch}"
            )


def calibrate(
    *,
    quick: bool = False,
    plan: CalibrationPlan | None = None,
    base: str | Path | dict = DEFAULT_BASE,
    formats: Sequence[str] = FORMATS,
    threads: int | None = None,
    hidden: int = DEFAULT_HIDDEN,
    intermediate: int = DEFAULT_INTERMEDIATE,
    use_gpu: bool | None = None,
    name: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure this machine and return a profile dict (schema hybrid-moe-profile/1) with extra keys
    measured_on, calibration (sources of every section, elapsed time), measurements and fit.

    base: profile whose numbers fill what is not measured (layer_fixed_us; gpu, copy and gpu_tflops
    without CUDA; formats not in `formats`). use_gpu: None = when CUDA is available.
    progress: optional rich.progress.Progress to report on.
    """
    from hybrid_moe.system import cuda_available, default_threads, info

    t_start = time.perf_counter()
    plan = plan or (CalibrationPlan.quick() if quick else CalibrationPlan())
    plan.validate()
    formats = list(formats)
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {list(FORMATS)}, got {formats}")
    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if hidden % 32 or intermediate % 32 or hidden < 32 or intermediate < 32:
        raise ValueError(
            f"hidden and intermediate must be positive multiples of 32, got {hidden}, "
            f"{intermediate}"
        )
    base_prof = load_profile(base)
    have_cuda = cuda_available() and torch.cuda.is_available()
    if use_gpu is None:
        use_gpu = have_cuda
    elif use_gpu and not have_cuda:
        raise ValueError(
            "use_gpu=True but CUDA is unavailable (no device, or hybrid_moe built without CUDA)"
        )

    n_gpu_steps = (3 + len(plan.gpu_decode_tokens) + len(plan.gpu_prefill_tokens)) * len(formats)
    total = (
        1
        + len(formats) * (1 + len(plan.tokens))
        + (n_gpu_steps + len(plan.copy_sizes) + 2 if use_gpu else 0)
    )
    task = progress.add_task("calibrating", total=total) if progress is not None else None

    def tick(what: str | None = None) -> None:
        if progress is not None:
            progress.update(task, advance=1, **({"description": what} if what else {}))

    torch.set_num_threads(threads)
    tick("DRAM bandwidth")
    dram = measure_dram_gbps(threads, plan.dram_mib, reps=max(3, plan.reps))
    cpu_rows, ovh_rows = [], []
    for fmt in formats:
        ovh_rows.append(measure_cpu_overhead(fmt, threads, plan.reps))
        tick(f"CPU {fmt}")
        cpu_rows += measure_cpu(
            fmt,
            hidden,
            intermediate,
            plan.tokens,
            plan.experts_per_call,
            plan.pool_mib,
            threads,
            plan.reps,
            tick,
        )
    gpu_rows: list[dict] = []
    copy_rows: list[dict] = []
    if use_gpu:
        from hybrid_moe import gpu as gpu_mod

        ebytes = {
            f: int(gpu_mod.expert_layout(f, hidden, intermediate)["weight_bytes"]) for f in formats
        }
        for fmt in formats:
            tick(f"GPU {fmt}")
            gpu_rows += measure_gpu(
                fmt,
                hidden,
                intermediate,
                plan.gpu_decode_tokens,
                plan.gpu_prefill_tokens,
                plan.experts_per_call,
                plan.reps,
                tick,
            )
        tick("copies")
        sizes = sorted(set(plan.copy_sizes) | set(ebytes.values()))
        copy_rows = measure_copy(sizes, plan.copy_batch, plan.reps, tick)

    prof = build_profile(
        cpu_rows=cpu_rows,
        overhead_rows=ovh_rows,
        dram_gbps=dram,
        gpu_rows=gpu_rows,
        copy_rows=copy_rows,
        base=base_prof,
        formats=formats,
        hidden=hidden,
        intermediate=intermediate,
        threads=threads,
        name=name or profile_name(),
    )
    prof["measured_on"] = {
        "hostname": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d"),
        "time": time.strftime("%H:%M:%S"),
        "machine": _jsonable(info()),
    }
    prof["calibration"]["quick"] = bool(quick)
    prof["calibration"]["plan"] = asdict(plan)
    prof["calibration"]["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    load_profile(prof)  # the result must satisfy the schema
    return prof


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def build_profile(
    *,
    cpu_rows: list[dict],
    overhead_rows: list[dict],
    dram_gbps: float,
    gpu_rows: list[dict],
    copy_rows: list[dict],
    base: dict,
    formats: Sequence[str],
    hidden: int,
    intermediate: int,
    threads: int,
    name: str,
) -> dict[str, Any]:
    """Fit the measurements (see the module note) into a profile; pure function of its inputs."""
    from hybrid_moe.cost_model import load_profile as _validate

    base = _validate(base)
    F1 = expert_flops_per_token(hidden, intermediate)
    ebytes = {f: _weight_bytes(f, hidden, intermediate) for f in FORMATS}
    fit: dict[str, Any] = {"cpu": {}, "gpu": {}}
    notes: dict[str, str] = {}
    sources: dict[str, str] = {}
    prof: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "cpu": {"threads": threads},
        "gpu": copy.deepcopy(base["gpu"]),
        "copy": copy.deepcopy(base["copy"]),
        "layer_fixed_us": float(base["layer_fixed_us"]),
        "formats": copy.deepcopy(base["formats"]),
    }
    sources["layer_fixed_us"] = f"base:{base['name']}"
    notes["layer_fixed_us"] = (
        f"not measured (model work outside the experts): taken from base profile {base['name']!r}"
    )
    if "decode" in base:  # the live decode path: fitted to bench decode runs, not timed here
        prof["decode"] = copy.deepcopy(base["decode"])
        sources["decode"] = f"base:{base['name']}"
        notes["decode"] = (
            f"not measured by calibrate (bench/fit_decode_path.py fits it to a `hybrid-moe bench "
            f"decode` run): taken from base profile {base['name']!r}"
        )

    # CPU: overhead from tiny experts, roofline per format.
    if not cpu_rows:
        raise ValueError("build_profile needs CPU measurements")
    cpu_ovh = float(np.mean([r["expert_us"] for r in overhead_rows])) if overhead_rows else 0.0
    kernel_gbps = {}
    for fmt in formats:
        rows = [r for r in cpu_rows if r["format"] == fmt]
        fr = fit_roofline(
            [r["n"] for r in rows], [r["expert_us"] for r in rows], overhead_us=cpu_ovh
        )
        mem_us = max(fr.mem_us, 1e-3)
        kernel_gbps[fmt] = ebytes[fmt] / mem_us / 1e3
        tflops = F1 / fr.us_per_token / 1e6 if fr.us_per_token > 0 else 1e3
        fit["cpu"][fmt] = dict(
            asdict(fr),
            kernel_gbps=kernel_gbps[fmt],
            tflops=tflops,
            tflops_is_lower_bound=fr.compute_bound_points == 0,
        )
    dram = max([dram_gbps, *kernel_gbps.values()])
    if dram > dram_gbps:
        notes["dram_read_gbps"] = (
            f"streaming reader {dram_gbps:.1f} GB/s, below the expert kernel's "
            f"{dram:.1f} GB/s: the kernel's rate is used (efficiency 1)"
        )
    else:
        notes["dram_read_gbps"] = (
            f"measured: pinned pool workers stream a buffer far beyond the L3, {threads} threads"
        )
    prof["cpu"].update(dram_read_gbps=round(dram, 3), expert_overhead_us=round(cpu_ovh, 3))
    for fmt in formats:
        prof["formats"][fmt]["cpu_efficiency"] = round(min(1.0, kernel_gbps[fmt] / dram), 4)
        prof["formats"][fmt]["cpu_tflops"] = round(fit["cpu"][fmt]["tflops"], 4)
    sources["cpu"] = "measured"
    notes["cpu"] = (
        "CPU MoE layer kernel, experts rotated through a pool beyond the L3; t(n) = overhead + "
        "max(bytes / (dram * efficiency), flops / cpu_tflops) fitted by least squares"
    )

    # GPU: one joint fit of the decode kernel's rows (see fit_gpu_decode); the prefill rows fix
    # a format's FLOP term only where the decode rows leave it open (no FLOP-bound decode point).
    if gpu_rows:
        gfit = fit_gpu_decode(gpu_rows, formats, ebytes, F1)
        prof["gpu"] = {
            "name": _gpu_name(),
            "vram_gbps": round(gfit["vram_gbps"], 2),
            "expert_overhead_us": round(gfit["expert_overhead_us"], 3),
            "layer_overhead_us": round(gfit["layer_overhead_us"], 3),
        }
        for fmt in formats:
            prof["formats"][fmt]["gpu_tflops"] = round(gfit["formats"][fmt]["tflops"], 3)
        fit["gpu"] = gfit
        sources["gpu"] = "measured"
        notes["gpu"] = (
            "decode kernel (CUDA events) and prefill path (host clock after synchronize); layer "
            "time = layer_overhead + E * (expert_overhead + max(bytes / vram, n * flops / "
            "gpu_tflops)) fitted jointly to every decode-kernel row by least squares of the "
            "relative error. The decode kernel streams an expert's weights once per (token, "
            "expert) pair, so its time grows ~linearly in n from n = 1: gpu_tflops is then that "
            "kernel's effective rate, not the prefill GEMM's; the prefill rows set gpu_tflops "
            "only for a format whose decode rows are all memory-bound (fit.gpu.<fmt>.tflops_from)"
        )
    else:
        sources["gpu"] = f"base:{base['name']} (no CUDA: not measured)"
        notes["gpu"] = (
            f"NOT MEASURED: no CUDA here; gpu section and gpu_tflops copied from {base['name']!r}"
        )
    if copy_rows:
        lat, inv = fit_line([r["bytes"] for r in copy_rows], [r["copy_us"] for r in copy_rows])
        prof["copy"] = {"h2d_gbps": round(1.0 / inv / 1e3, 3), "latency_us": round(lat, 3)}
        fit["copy"] = {"latency_us": lat, "h2d_gbps": 1.0 / inv / 1e3}
        sources["copy"] = "measured"
        notes["copy"] = (
            "pinned cudaMemcpyAsync, back-to-back copies timed by CUDA events; least-squares line"
        )
    else:
        sources["copy"] = f"base:{base['name']} (no CUDA: not measured)"
        notes["copy"] = f"NOT MEASURED: no CUDA here; copy section copied from {base['name']!r}"
    for fmt in FORMATS:
        if fmt not in formats:
            sources[f"formats.{fmt}"] = f"base:{base['name']} (format not calibrated)"
    measured_gpu = sources["gpu"] == "measured"
    prof["description"] = (
        f"Calibrated by `hybrid-moe calibrate` on {socket.gethostname()} "
        f"({time.strftime('%Y-%m-%d')}): CPU measured"
        + (
            "; GPU and copies measured"
            if measured_gpu
            else f"; GPU and copy numbers from base profile {base['name']!r} (no CUDA)"
        )
    )
    prof["notes"] = notes
    prof["calibration"] = {
        "base_profile": base["name"],
        "sources": sources,
        "formats": list(formats),
        "expert_shape": {"hidden": hidden, "intermediate": intermediate},
        "expert_bytes": {f: ebytes[f] for f in formats},
    }
    prof["measurements"] = {
        "dram_read_gbps": dram_gbps,
        "cpu": cpu_rows,
        "cpu_overhead": overhead_rows,
        "gpu": gpu_rows,
        "copy": copy_rows,
    }
    prof["fit"] = _jsonable(fit)
    return prof


def _weight_bytes(fmt: str, hidden: int, intermediate: int) -> int:
    hi = 3 * hidden * intermediate
    return hi * 2 if fmt == "bf16" else hi // 32 * 34


def _gpu_name() -> str:
    try:
        return torch.cuda.get_device_name()
    except Exception:  # no device: the caller only asks when it measured one
        return "unknown"


def comparison_rows(prof: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured vs fitted time of every measurement, through the native cost model built from the
    profile (the same numbers the runtime and simulator use). Rows: what, format, size, measured_us,
    fitted_us, ratio (fitted / measured)."""
    from hybrid_moe.cost_model import cost_model

    shape = prof["calibration"]["expert_shape"]
    H, inter = shape["hidden"], shape["intermediate"]
    models = {f: cost_model(prof, f, H, inter) for f in prof["calibration"]["formats"]}
    out = []
    m = prof["measurements"]
    for r in m["cpu"]:
        cm = models[r["format"]]
        out.append(
            {
                "what": "cpu layer",
                "format": r["format"],
                "size": f"E={r['experts']} n={r['n']}",
                "measured_us": r["layer_us"],
                "fitted_us": r["experts"] * cm.t_cpu(r["n"]),
            }
        )
    for r in m["gpu"]:
        cm = models[r["format"]]
        out.append(
            {
                "what": f"gpu {r['kernel']}",
                "format": r["format"],
                "size": f"E={r['experts']} n={r['n']}",
                "measured_us": r["layer_us"],
                "fitted_us": float(prof["gpu"]["layer_overhead_us"])
                + r["experts"] * cm.t_gpu(r["n"]),
            }
        )
    lat, gbps = float(prof["copy"]["latency_us"]), float(prof["copy"]["h2d_gbps"])
    for r in m["copy"]:  # t_copy = latency + bytes / bandwidth (cost_model.h), for any size
        out.append(
            {
                "what": "h2d copy",
                "format": "-",
                "size": f"{r['bytes'] / 2**20:.2f} MiB",
                "measured_us": r["copy_us"],
                "fitted_us": lat + r["bytes"] / (gbps * 1e3),
            }
        )
    for r in out:
        r["ratio"] = r["fitted_us"] / r["measured_us"] if r["measured_us"] > 0 else math.nan
    return out


def write_profile(prof: dict[str, Any], path: str | Path) -> Path:
    """Write the profile as JSON (parent folders created); returns the path."""
    path = Path(path).expanduser()
    if path.suffix != ".json":
        raise ValueError(f"--out must name a .json file, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(prof, indent=1))
    os.replace(tmp, path)
    return path
