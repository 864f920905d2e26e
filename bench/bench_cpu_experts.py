"""CPU MoE layer benchmark: our kernels vs torch bf16 and kt-kernel (AMXINT8, AMXINT4), plus the
machine's DRAM read bandwidth, in one run. JSON out.

Shape: Qwen3-30B-A3B experts (H=2048, I=768), E=128 experts per layer, top-8 routing (random,
distinct per token), T tokens. `--layers` copies of the layer (default 2: 2.4 GB bf16, 1.3 GB Q8_0)
are cycled so that a call's experts are not in the 300 MiB L3 from the previous call. Every expert
of every layer is touched once before timing. Time = median over repeats of one layer call (ours:
the pybind call into the C++ kernel, without the Python argument checks).
GB/s = bytes of the distinct experts the call reads / time (bf16 9.4 MB, Q8_0 5.0 MB per expert);
GFLOP/s = 2 * 3 * H * I * T * k / time.

kt-kernel timing. Per call (`kt_<m>`): submit + sync of one layer, as a runtime uses it. Its
CPUInfer runs `--kt-threads` pinned workers plus an unpinned task-queue thread, and the caller
spins in sync(). With as many workers as cores (16 on the lent Xeon) that is more runnable threads
than cores, the OS time-slices them, and every call takes a multiple of ~8 ms (7.999 ms at T=1
and T=4, measured again 2026-11-28); with 14 workers kt runs at its real speed (0.67-0.76 ms at
T=1). So `--kt-threads` defaults to threads - 2. `kt_<m>_batched`: `reps` layer calls submitted
back to back, one sync, time / reps (its throughput). `x_vs_kt_int8` uses the fastest kt AMXINT8
number of the row (per call or batched).

Memory: our stores (and torch's tensors) are torch allocations advised to transparent huge pages
(THP_MEM_ALLOC_ENABLE=1, set here before torch allocates) like the runtime's expert store and the
DRAM reader (csrc/cpu/stream_buffer.h); HYBRID_MOE_HUGEPAGES=0 turns both off (4 KiB pages).

Fractions of DRAM, three ways (our rows): `frac_dram` against the reader over a fresh buffer
(start of the run), `frac_dram_same_bytes` against the reader over our stores' own bytes right
before each T, and `frac_dram_paired`: `--paired-rounds` rounds of (the reader over the same
bytes, one pass per read method, then a batch of the T's calls), the median of the per-round
ratios. The lent Xeon's DRAM rate flips between ~100 and ~140 GB/s over seconds; a round lasts
~0.1 s, so reader and calls share the machine's state and the ratio measures the kernel alone.

`--fixed-cost 8,16,32,64` also times ours at T=1 with that many experts per call and fits
time = fixed + n * per_expert (intercept: per-call fixed cost; slope: streaming GB/s), plus an
empty call and a pool round trip (see fixed_cost_sweep).

    python bench/bench_cpu_experts.py --threads 16 --json results_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

# Before torch's first large allocation: torch reads THP_MEM_ALLOC_ENABLE once.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", os.environ.get("HYBRID_MOE_HUGEPAGES", "1"))

import numpy as np
import torch

from hybrid_moe._native import native
from hybrid_moe.cpu_experts import CpuExpertStore, available_isas


def median_time(fn, reps: int, warm: int = 2) -> float:
    for _ in range(warm):
        fn(0)
    ts = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i + 1)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def dram_read_gbs(threads: int, gib: float = 2.0, reps: int = 7) -> tuple[float, dict]:
    """The machine's DRAM read bandwidth: our pool's pinned workers stream a buffer far larger
    than the L3 (native.cpu_dram_read_gbps, cpu/dram_read.h; median of reps, best of its read
    methods). The fractions of DRAM in this benchmark use it; `hybrid-moe calibrate` measures
    the same way. Also returns every method's GB/s, read from the reader's stderr log
    (HYBRID_MOE_DRAM_READ_LOG=1) through a temporary file on fd 2."""
    os.environ["HYBRID_MOE_DRAM_READ_LOG"] = "1"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 2)
        try:
            bw = float(native.cpu_dram_read_gbps(int(gib * 1024), threads, reps))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            del os.environ["HYBRID_MOE_DRAM_READ_LOG"]
        log.seek(0)
        text = log.read()
    methods = {}
    for line in text.splitlines():
        m = re.match(r"dram_read (\S+)\s+([0-9.]+) GB/s", line)
        if m:
            methods[m.group(1)] = float(m.group(2))
    return bw, methods


def same_bytes_read(stores, threads: int, reps: int = 5) -> dict:
    """The DRAM reader's loops over the stores' own bytes (native.cpu_dram_read_ranges): the
    denominator of `frac_dram_same_bytes`. A fresh reader buffer lands on other pages than the
    experts; on the lent Xeon such a buffer read ~100 GB/s in some processes and ~135 in others
    while a kernel tracked the reader on the same buffer (bench/bench_stream_threads.cpp), so
    only the same bytes judge a kernel's streaming. Also the stores' share on huge pages."""
    ptrs = [st.data.data_ptr() for st in stores]
    sizes = [st.data.numel() * st.data.element_size() for st in stores]
    r = dict(native.cpu_dram_read_ranges(ptrs, sizes, threads, reps))
    r["methods"] = dict(r["methods"])
    r["huge_page_share"] = r["huge_page_bytes"] / sum(sizes)
    return r


def paired_rounds(time_batch, call_bytes: float, stores, threads: int, rounds: int) -> dict:
    """Rounds of (the reader over the stores' bytes, one pass per method; time_batch(): the median
    seconds of a batch of calls), the ratio of the calls' GB/s to the reader's in each round, and
    their median (`frac_dram_paired`). Reader and calls of a round run within ~0.1 s, in the
    same state of the machine's memory system."""
    ratios, readers = [], []
    for _ in range(rounds):
        rd = same_bytes_read(stores, threads, reps=1)["best_gbps"]
        gbs = call_bytes / time_batch() / 1e9
        readers.append(rd)
        ratios.append(gbs / rd)
    return {
        "frac_dram_paired": statistics.median(ratios),
        "paired_ratios": ratios,
        "paired_reader_gbs": readers,
    }


def torch_sum_gbs(threads: int, gib: float = 2.0, reps: int = 7) -> float:
    """Second opinion: torch sum over a buffer far larger than L3 (median of reps). On the lent
    Xeon it read low (86 GB/s against 111 from a streaming reader), so it is only reported."""
    torch.set_num_threads(threads)
    a = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    a.sum()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    return a.numel() * 4 / statistics.median(ts) / 1e9


def _tile_experts(base: torch.Tensor, E: int) -> torch.Tensor:
    """[n, ...] -> [E, ...]: expert e is a copy of base[e % n]. Random generation is single-
    threaded in torch (GBs take tens of seconds); the copies are distinct memory, which is all
    the timing needs."""
    reps = (E + base.shape[0] - 1) // base.shape[0]
    return base.repeat(reps, *([1] * (base.dim() - 1)))[:E].contiguous()


def make_layers(L, E, H, I, seed=0, distinct=8):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(L):
        n = min(E, distinct)
        mk = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
        layers.append(tuple(_tile_experts(mk(n, *s), E) for s in ((I, H), (I, H), (H, I))))
    return layers


def bf16_store(gate, up, down) -> CpuExpertStore:
    E, I, H = gate.shape
    lay = dict(native.expert_layout("bf16", H, I))
    buf = torch.zeros(E, lay["stride"], dtype=torch.uint8)
    for key, w in (("gate", gate), ("up", up), ("down", down)):
        off, n = lay[f"{key}_offset"], lay[f"{key}_bytes"]
        buf[:, off : off + n] = w.contiguous().view(torch.uint8).reshape(E, -1)
    return CpuExpertStore("bf16", H, I, buf, lay)


def q8_store(E, H, I, seed) -> CpuExpertStore:
    """Random Q8_0 experts (valid blocks: int8 in [-127, 127], fp16 scales ~1e-3)."""
    lay = dict(native.expert_layout("q8_0", H, I))
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-127, 128, (min(E, 8), lay["stride"]), dtype=torch.int8, generator=g)
    buf = _tile_experts(base, E).view(torch.uint8)
    scale = torch.tensor([1e-3], dtype=torch.float16).view(torch.uint8)
    for key in ("gate", "up", "down"):
        off, n = lay[f"{key}_offset"], lay[f"{key}_bytes"]
        blocks = buf[:, off : off + n].view(E, -1, 34)
        blocks[:, :, 0] = scale[0]
        blocks[:, :, 1] = scale[1]
    return CpuExpertStore("q8_0", H, I, buf, lay)


def routing(T, E, k, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.argsort(torch.rand(T, E, generator=g), dim=1)[:, :k]
    w = torch.rand(T, k, generator=g)
    return ids, w / w.sum(1, keepdim=True)


def torch_bf16_layer(gate, up, down, x, ids, w):
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bfloat16)
    for e in ids.unique().tolist():
        rows, cols = (ids == e).nonzero(as_tuple=True)
        xe = x[rows]
        h = torch.nn.functional.silu(xe @ gate[e].T) * (xe @ up[e].T)
        out.index_add_(0, rows, (h @ down[e].T) * w[rows, cols].to(torch.bfloat16)[:, None])
    return out


class KtLayer:
    """One kt-kernel AMX MoE layer driven through its CPU path (submit + sync)."""

    def __init__(self, layer_idx, method, gate, up, down, threads, k, tmpdir):
        from kt_kernel.utils.amx import AMXMoEWrapper

        E, I, H = gate.shape
        self.k = k
        self.w = AMXMoEWrapper(
            layer_idx=layer_idx,
            num_experts=E,
            num_experts_per_tok=k,
            hidden_size=H,
            moe_intermediate_size=I,
            gpu_experts_mask=None,
            cpuinfer_threads=threads,
            threadpool_count=1,
            weight_path=tmpdir,
            chunked_prefill_size=512,
            method=method,
        )
        self.w.load_weights_from_tensors(gate, up, down, torch.arange(E))

    def submit(self, x_bf16, ids, w):
        """Queues one layer call; returns the tensors it reads and writes (keep them until sync)."""
        T = x_bf16.shape[0]
        bsz = torch.tensor([T], dtype=torch.int32)
        ids64 = ids.to(torch.int64).contiguous()
        wf = w.to(torch.float32).contiguous()
        out = torch.zeros_like(x_bf16)
        task = self.w.moe.forward_task(
            bsz.data_ptr(),
            self.k,
            ids64.data_ptr(),
            wf.data_ptr(),
            x_bf16.data_ptr(),
            out.data_ptr(),
            False,
        )
        self.w.cpu_infer.submit(task)
        return (bsz, ids64, wf, x_bf16, out)

    def sync(self):
        self.w.cpu_infer.sync()

    def __call__(self, x_bf16, ids, w):
        keep = self.submit(x_bf16, ids, w)
        self.sync()
        return keep[-1]


def kt_batched_time(lay, calls, L, reps: int = 3) -> float:
    """Per-layer time of len(calls) layer calls submitted back to back, one sync (median)."""
    args = [(x.to(torch.bfloat16), ids, w) for x, ids, w in calls]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        keep = [lay[i % L].submit(*a) for i, a in enumerate(args)]
        lay[0].sync()
        ts.append((time.perf_counter() - t0) / len(args))
        del keep
    return statistics.median(ts)


def fit_line(xs, ys):
    """Least-squares y = a + b x -> (a, b)."""
    xm, ym = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True))
    b = sxy / sum((x - xm) ** 2 for x in xs)
    return ym - b * xm, b


def fixed_cost_sweep(ours, isas, ebytes, E, H, I, L, a) -> dict:
    """Where a T=1 layer call's time goes: ms at n experts per call for each n in --fixed-cost,
    the fitted intercept (per-call fixed cost) and slope (ms per expert -> streaming GB/s), plus
    (a) an empty call (0 assignments: Python + binding only) and (b) a pool round trip (one tiny
    64x64 expert: submit, 3 phases with their barriers, join), back to back (workers spinning)
    and after a 2 ms pause (workers asleep)."""
    ns = [int(n) for n in a.fixed_cost.split(",")]
    out = {"experts_per_call": ns}
    reps = max(9, a.max_reps)
    x1 = torch.randn(1, H)
    empty = ours("bf16", isas[0])(x1, torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0), 0)
    out["empty_call_ms"] = median_time(lambda i: empty(), reps * 4) * 1e3
    tiny_store = CpuExpertStore.from_tensors(
        *(torch.randn(1, 64, 64) * 0.05 for _ in range(3)), fmt="bf16"
    )
    tiny_ptrs = tiny_store.expert_ptr_array()
    xt, ot = torch.randn(1, 64), torch.zeros(1, 64)
    tok, eid, wt = (np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1, np.float32))

    def tiny():
        native.cpu_moe_layer(
            "bf16",
            64,
            64,
            tiny_ptrs,
            xt.data_ptr(),
            1,
            tok,
            eid,
            wt,
            ot.data_ptr(),
            a.threads,
            isas[0],
        )

    out["pool_round_trip_ms"] = median_time(lambda i: tiny(), reps * 4) * 1e3

    def pause_then_tiny():
        time.sleep(0.002)
        tiny()

    out["pool_round_trip_after_2ms_ms"] = (
        median_time(lambda i: pause_then_tiny(), reps) * 1e3
        - median_time(lambda i: time.sleep(0.002), reps) * 1e3
    )
    for fmt in ebytes:
        for isa in isas:
            ms = []
            for n in ns:
                calls = [
                    ours(fmt, isa)(torch.randn(1, H), *routing(1, E, n, 7000 + r), r % L)
                    for r in range(reps + 2)
                ]
                ms.append(median_time(lambda i, c=calls: c[i](), reps) * 1e3)
            fixed, per = fit_line(ns, ms)
            out[f"ours_{fmt}_{isa}"] = {
                "ms": ms,
                "fixed_ms": fixed,
                "ms_per_expert": per,
                "stream_gbs": ebytes[fmt] / (per * 1e-3) / 1e9,
            }
            print(
                f"fixed cost ours_{fmt}_{isa}: "
                + " ".join(f"n={n}:{m:.3f}ms" for n, m in zip(ns, ms, strict=True))
                + f" -> fixed {fixed:.3f} ms + {per:.4f} ms/expert "
                f"({ebytes[fmt] / (per * 1e-3) / 1e9:.1f} GB/s streaming)",
                flush=True,
            )
    print(
        f"empty call {out['empty_call_ms'] * 1e3:.1f} us; pool round trip (tiny expert) "
        f"{out['pool_round_trip_ms'] * 1e3:.1f} us back to back, "
        f"{out['pool_round_trip_after_2ms_ms'] * 1e3:.1f} us after a 2 ms pause",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=int(native.cpu_default_threads()))
    ap.add_argument("--tokens", default="1,4,16,64,256,512")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--isas",
        default="",
        help="comma list; default: the SIMD variants this machine runs (avx2, avx512, amx)",
    )
    ap.add_argument(
        "--dram-gib", type=float, default=2.0, help="DRAM reader buffer (GiB, far above the L3)"
    )
    ap.add_argument(
        "--formats",
        default="bf16,q8_0,q8_0r16",
        help="comma list of our weight formats (q8_0r16: Q8_0 with rows in groups of 16)",
    )
    ap.add_argument("--kt", default="AMXINT8,AMXINT4", help="kt-kernel methods ('' to skip)")
    ap.add_argument(
        "--kt-threads", type=int, default=0, help="kt CPUInfer workers (0: --threads - 2, >= 1)"
    )
    ap.add_argument(
        "--skip-torch", action="store_true", help="leave out torch (bf16 baseline, sum reader)"
    )
    ap.add_argument("--max-reps", type=int, default=15)
    ap.add_argument(
        "--paired-rounds",
        type=int,
        default=7,
        help="rounds of (reader over our stores, a batch of our calls) per T and format for "
        "frac_dram_paired (0: skip)",
    )
    ap.add_argument(
        "--fixed-cost",
        default="",
        help="comma list of experts per call (e.g. 8,16,32,64): time ours at T=1 with that many "
        "experts and fit time = fixed + n * per_expert (plus an empty call and a pool round trip)",
    )
    ap.add_argument(
        "--pin-memory",
        action="store_true",
        help="put our expert stores in CUDA-pinned host memory, as the runtime's store is (needs a "
        "GPU; measures whether pinned 4 KiB pages stream slower than the default allocation)",
    )
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.pin_memory and not torch.cuda.is_available():
        raise SystemExit("--pin-memory needs a CUDA device (torch.cuda.is_available() is False)")
    torch.set_num_threads(a.threads)
    E, H, I, k, L = a.experts, a.hidden, a.intermediate, a.topk, a.layers
    Ts = [int(t) for t in a.tokens.split(",")]
    runnable = available_isas()
    if a.isas == "none":  # kt / torch only
        isas = []
    else:
        asked = a.isas.split(",") if a.isas else ["avx2", "avx512", "amx"]
        isas = [s for s in asked if s in runnable] or ["generic"]
    kt_threads = a.kt_threads or max(1, a.threads - 2)
    res = {
        "machine": {
            "cpu": dict(native.cpu_features())["brand"],
            "threads": a.threads,
            "pool": dict(native.cpu_pool_info(a.threads)),
            "isas_runnable": runnable,
        },
        "shape": {"E": E, "H": H, "I": I, "k": k, "layers": L},
        "kt_threads": kt_threads,
        "rows": [],
        "errors": {},
    }
    bw, bw_methods = dram_read_gbs(a.threads, a.dram_gib)
    res["dram_read_gbs"] = bw
    res["dram_read_methods_gbs"] = bw_methods
    print(
        "DRAM read methods (GB/s): " + ", ".join(f"{k} {v:.1f}" for k, v in bw_methods.items()),
        flush=True,
    )
    res["torch_sum_read_gbs"] = float("nan") if a.skip_torch else torch_sum_gbs(a.threads)
    print(
        f"DRAM read (pinned pool stream, {a.threads} threads): {bw:.1f} GB/s; "
        f"torch sum: {res['torch_sum_read_gbs']:.1f} GB/s",
        flush=True,
    )

    t0 = time.time()
    layers = make_layers(L, E, H, I)
    stores = {
        "bf16": [bf16_store(*lw) for lw in layers],
        "q8_0": [q8_store(E, H, I, s) for s in range(L)],
    }
    # q8_0r16: the same Q8_0 experts with rows in groups of 16 (core/q8_rows16.h)
    if "q8_0r16" in a.formats.split(","):
        stores["q8_0r16"] = [s.with_packing("q8_rows16") for s in stores["q8_0"]]
    if a.pin_memory:  # same bytes, moved into cudaHostAlloc'd pages
        stores = {
            f: [
                CpuExpertStore(
                    s.fmt, s.hidden, s.intermediate, s.data.pin_memory(), s.layout, s.packing
                )
                for s in v
            ]
            for f, v in stores.items()
        }
    res["pinned_memory"] = bool(a.pin_memory)
    ptrs = {f: [s.expert_ptr_array() for s in v] for f, v in stores.items()}
    ebytes = {f: stores[f][0].layout["weight_bytes"] for f in stores}
    print(f"setup {time.time() - t0:.1f}s; expert bytes {ebytes}", flush=True)
    kt = {}
    tmp = tempfile.mkdtemp(prefix="ktk_")
    for m in [s for s in a.kt.split(",") if s]:
        try:
            t0 = time.time()
            kt[m] = [KtLayer(l, m, *layers[l], kt_threads, k, tmp) for l in range(L)]
            print(f"kt-kernel {m} loaded in {time.time() - t0:.1f}s", flush=True)
        except Exception as exc:  # record and go on: the rest of the run still counts
            res["errors"][f"kt_{m}"] = f"{type(exc).__name__}: {exc}"
            print(f"kt-kernel {m} unavailable: {exc}", flush=True)

    def ours(fmt, isa):
        return lambda x, ids, w, l: ours_call(fmt, isa, x, ids, w, l)

    def ours_call(fmt, isa, x, ids, w, l):
        """Prepares the arguments (outside the timed region), returns the timed call."""
        T, kk = ids.shape
        out = torch.zeros(T, H, dtype=torch.float32)
        tok = np.repeat(np.arange(T, dtype=np.int32), kk)
        eid = ids.to(torch.int32).reshape(-1).numpy()
        wf = w.to(torch.float32).reshape(-1).contiguous().numpy()
        x = x.contiguous()
        p, st = ptrs[fmt][l], stores[fmt][l]

        def call():  # holds x and out (the native call only sees their pointers)
            native.cpu_moe_layer(
                st.fmt,
                H,
                I,
                p,
                x.data_ptr(),
                T,
                tok,
                eid,
                wf,
                out.data_ptr(),
                a.threads,
                isa,
                st.packing,
            )

        return call

    # Each method: prep(x, ids, w, layer) -> call(); only call() is timed (argument conversion,
    # output allocation and dtype casts happen in prep, for every method alike).
    fmts = [f for f in a.formats.split(",") if f]
    methods = {f"ours_{f}_{i}": (ours(f, i), f) for f in fmts for i in isas}
    if not a.skip_torch:

        def torch_prep(x, ids, w, li):
            xb = x.to(torch.bfloat16)
            return lambda: torch_bf16_layer(*layers[li], xb, ids, w)

        methods["torch_bf16"] = (torch_prep, "bf16")
    for m, lay in kt.items():

        def kt_prep(x, ids, w, l, lay=lay):
            xb = x.to(torch.bfloat16)
            return lambda: lay[l](xb, ids, w)

        methods[f"kt_{m}"] = (kt_prep, "bf16")

    # Touch every expert of every layer once (first use page-faults).
    for fn, _ in methods.values():
        for l in range(L):
            ids = torch.randperm(E)[: (E // k) * k].reshape(-1, k)
            fn(torch.randn(ids.shape[0], H), ids, torch.rand(ids.shape), l)()

    if a.fixed_cost and isas:
        res["fixed_cost"] = fixed_cost_sweep(ours, isas, ebytes, E, H, I, L, a)

    for T in Ts:
        if kt:  # kt's workers spin ~50 ms after a call on the cores ours use: let them go idle
            time.sleep(0.2)
        reps = max(3, min(a.max_reps, 2048 // (T * 8) + 3))
        calls = [(torch.randn(T, H), *routing(T, E, k, 1000 * T + r)) for r in range(reps + 2)]
        row = {"T": T, "reps": reps}
        # The reader over each of our formats' stores, next to the timing (drift, placement)
        same = {}
        for f in fmts if isas else []:
            try:
                same[f] = same_bytes_read(stores[f], a.threads)
            except ValueError as exc:  # stores smaller than the reader's 64 MiB minimum
                res["errors"][f"dram_read_same_bytes_{f}"] = str(exc)
        res.setdefault("dram_read_same_bytes", []).append({"T": T, **same})
        distinct = float(np.mean([len(c[1].unique()) for c in calls]))

        timed, paired = {}, {}
        for name, (prep, fmt) in methods.items():
            prepared = [prep(*c, i % L) for i, c in enumerate(calls)]
            timed[name] = (median_time(lambda i, p=prepared: p[i](), reps), fmt)
            if name.startswith("ours_") and fmt in same and a.paired_rounds > 0:
                paired[name] = paired_rounds(
                    lambda p=prepared, r=reps: median_time(lambda j: p[j](), r),
                    distinct * ebytes[fmt],
                    stores[fmt],
                    a.threads,
                    a.paired_rounds,
                )
            del prepared
        for m, lay in kt.items():
            timed[f"kt_{m}_batched"] = (kt_batched_time(lay, calls, L), "bf16")
        for name, (dt, fmt) in timed.items():
            row[name] = {
                "ms": dt * 1e3,
                "weight_gbs": distinct * ebytes[fmt] / dt / 1e9,
                "gflops": 2 * 3 * H * I * T * k / dt / 1e9,
            }
        names = list(row.keys() - {"T", "reps"})
        names.sort(key=lambda n: list(methods).index(n) if n in methods else len(methods) + len(n))
        base = row["torch_bf16"]["ms"] if "torch_bf16" in row else float("nan")
        kt8 = min(
            [row[n]["ms"] for n in ("kt_AMXINT8", "kt_AMXINT8_batched") if n in row],
            default=float("nan"),
        )
        for name in names:
            row[name]["x_vs_torch_bf16"] = base / row[name]["ms"]
            row[name]["x_vs_kt_int8"] = kt8 / row[name]["ms"]
            row[name]["frac_dram"] = row[name]["weight_gbs"] / bw
            fmt = timed[name][1] if name in timed else ""
            if name.startswith("ours_") and fmt in same:
                row[name]["dram_same_bytes_gbs"] = same[fmt]["best_gbps"]
                row[name]["frac_dram_same_bytes"] = row[name]["weight_gbs"] / same[fmt]["best_gbps"]
            if name in paired:
                row[name].update(paired[name])
        res["rows"].append(row)
        print(
            f"T={T:4d} "
            + "  ".join(f"{n}={row[n]['ms']:.2f}ms/{row[n]['weight_gbs']:.0f}GB/s" for n in names),
            flush=True,
        )
        for f, r in same.items():
            print(
                f"T={T:4d} reader over the {f} stores: {r['best_gbps']:.1f} GB/s ({r['best']}), "
                f"{100 * r['huge_page_share']:.0f}% on huge pages",
                flush=True,
            )

    print(
        "\nper-layer ms | weight GB/s (fraction of DRAM: fresh buffer / same bytes / paired) | x "
        "vs torch bf16 | x vs kt AMXINT8 (best of per call, batched)"
    )
    for row in res["rows"]:
        for name in [n for n in row if n not in ("T", "reps")]:
            r = row[name]
            print(
                f"T={row['T']:4d} {name:20s} {r['ms']:8.3f} ms {r['weight_gbs']:6.1f} GB/s "
                f"({r['frac_dram']:.2f} / {r.get('frac_dram_same_bytes', float('nan')):.2f} / "
                f"{r.get('frac_dram_paired', float('nan')):.2f}) "
                f"{r['gflops']:7.0f} GFLOP/s x{r['x_vs_torch_bf16']:.2f} "
                f"kt x{r.get('x_vs_kt_int8', float('nan')):.2f}"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
