"""GPU-side benchmarks (issue 5): expert copy throughput (alone and under 16 CPU threads of
memory-bound work), the decode kernels against torch bmm and the HBM copy ceiling (also without
programmatic dependent launch between the two decode phases, HM_DECODE_PDL=0), and the prefill
path against torch's grouped matmul. Qwen3-30B-A3B expert shapes (H=2048, I=768). Medians of
repeats; ratios against baselines measured in the same run; JSON out.

  python bench/bench_gpu.py --out results_gpu.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

from hybrid_moe import gpu

H, I = 2048, 768


def med(xs):
    return statistics.median(xs)


def cuda_time_us(fn, iters, reps=7):
    """Median over reps of the mean time of `iters` calls, by CUDA events (microseconds)."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1000 / iters)
    return med(out)


def graph_time_us(fn, per_graph, reps=7):
    """fn() issues per_graph units of work; capture once, replay, time per unit (us)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return cuda_time_us(g.replay, 5, reps) / per_graph


def random_experts(fmt, n_exp, seed=0):
    """Random experts generated on the GPU: (packed uint8 CPU [E, stride], G, U, D bf16 on GPU)."""
    torch.manual_seed(seed)
    G = (torch.randn(n_exp, I, H, device="cuda") / H**0.5).bfloat16()
    U = (torch.randn(n_exp, I, H, device="cuda") / H**0.5).bfloat16()
    D = (torch.randn(n_exp, H, I, device="cuda") / I**0.5).bfloat16()
    return gpu.pack_experts(G, U, D, fmt), G, U, D


def filled(fmt, n_exp, n_slots=None, seed=0):
    packed, G, U, D = random_experts(fmt, n_exp, seed)
    store = gpu.PinnedExpertStore.from_tensors(packed, fmt, H, I)
    slab = gpu.DeviceSlab(fmt, H, I, n_slots=n_slots or n_exp)
    mv = gpu.Mover(store, slab)
    for s in range(slab.n_slots):
        mv.request_fetch(s % n_exp, s)
    mv.wait_idle()
    return store, slab, mv, G, U, D


class CpuLoad:
    """`threads` CPU threads of memory-bound work: torch bf16 mat-vec over 1 GiB (far beyond the
    L3), like CPU experts. Counts its iterations with timestamps, so the DRAM bandwidth the CPU
    load itself gets is known for any time window (1 GiB read per iteration)."""

    _a = None

    def __init__(self, threads=16):
        self.threads = threads
        self.stop = False
        self.iters = 0
        self.stamps = []

    def __enter__(self):
        self._old_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        if CpuLoad._a is None:  # made once: 1 GiB of bf16
            CpuLoad._a = torch.empty(8192, 65536, dtype=torch.bfloat16).uniform_(-1, 1)
        self.a = CpuLoad._a
        self.v = torch.randn(65536).bfloat16()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        time.sleep(0.3)
        return self

    def _run(self):
        while not self.stop:
            torch.mv(self.a, self.v)
            self.iters += 1
            self.stamps.append(time.perf_counter())

    def gbps(self, t0, t1):
        """DRAM GB/s of the load between t0 and t1 (whole iterations that ended inside)."""
        st = [t for t in self.stamps if t0 <= t <= t1]
        if len(st) < 2:
            return float("nan")
        return (len(st) - 1) * self.a.numel() * 2 / (st[-1] - st[0]) / 1e9

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        torch.set_num_threads(self._old_threads)


def bench_copy(fmt, n_exp, n_copies, reps):
    """Expert copies through the Mover, alone and under CPU load, with the diagnostics that say
    why a loaded copy is slower: the CPU load's own DRAM bandwidth alone and during the copies,
    a plain torch pinned copy (no mover thread) under the same load, the mover with 16 copies
    queued instead of 4 (a starved mover thread would matter less), and a 15-thread load that
    leaves a core for the mover thread."""
    # n_copies slots, one request per slot per repeat (a newer request for a slot would supersede
    # a queued one); repeat r puts expert (s + r + 1) % n_exp into slot s, always a real copy.
    store, slab, mv, *_ = filled(fmt, n_exp, n_slots=n_copies)
    mv16 = gpu.Mover(store, slab, max_in_flight=16)
    stride = store.layout["stride"]
    mv.poll_completions()
    rep = [0]

    def mover_gbps(m, n_reps=reps):
        res = []
        for _ in range(n_reps):
            t0 = time.perf_counter()
            for s in range(n_copies):
                m.request_fetch((s + rep[0] + 1) % n_exp, s)
            m.wait_idle()
            res.append(n_copies * stride / (time.perf_counter() - t0) / 1e9)
            rep[0] += 1
            done = m.poll_completions()
            assert sum(c[2] == "ready" for c in done) == n_copies, "copy benchmark skipped copies"
        return med(res)

    src = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
    dst = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def torch_gbps():
        return (256 << 20) / cuda_time_us(lambda: dst.copy_(src, non_blocking=True), 2, reps) / 1e3

    alone = mover_gbps(mv)
    res = {"format": fmt, "expert_bytes": stride, "copies": n_copies, "mover_alone_GBps": alone}
    with CpuLoad() as load:
        t0 = time.perf_counter()
        time.sleep(0.25)
        t1 = time.perf_counter()
        loaded = mover_gbps(mv, 3 * reps)  # a longer window: ~15 load iterations
        t2 = time.perf_counter()
        res["cpu_load_alone_GBps"] = load.gbps(t0, t1)
        res["cpu_load_during_copies_GBps"] = load.gbps(t1, t2)
        res["mover_with_16_cpu_threads_GBps"] = loaded
        res["torch_pinned_256MiB_with_16_cpu_threads_GBps"] = torch_gbps()
        res["mover16_with_16_cpu_threads_GBps"] = mover_gbps(mv16, 3 * reps)
        res["cpu_load_iters"] = load.iters
    with CpuLoad(15):
        res["mover_with_15_cpu_threads_GBps"] = mover_gbps(mv, 3 * reps)
    del mv16
    return res


def pinned_peak_gbps(reps):
    src = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
    dst = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    t = cuda_time_us(lambda: dst.copy_(src, non_blocking=True), 3, reps)
    # expert-sized pinned copies through torch, for the same-size peak
    src2 = torch.empty(8, 10 << 20, dtype=torch.uint8).pin_memory()
    dst2 = torch.empty(8, 10 << 20, dtype=torch.uint8, device="cuda")

    def eight():
        for k in range(8):
            dst2[k].copy_(src2[k], non_blocking=True)

    t2 = cuda_time_us(eight, 4, reps)
    return {
        "pinned_256MiB_GBps": (256 << 20) / t / 1e3,
        "pinned_10MiB_x8_GBps": 8 * (10 << 20) / t2 / 1e3,
    }


def hbm_gbps():
    a = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = cuda_time_us(lambda: b.copy_(a), 5)
    return 2 * a.numel() / t / 1e3  # read + write


def bench_decode(fmt, n_exp, n_rot, hbm):
    store, slab, _mv, G, U, D = filled(fmt, n_exp)
    lay = store.layout
    gen = torch.Generator().manual_seed(1)
    plans, xs, stacks = [], [], []
    for _ in range(n_rot):
        idx = torch.randperm(n_exp, generator=gen)[:8]
        w = torch.rand(8, generator=gen) + 0.1
        plans.append(gpu.device_plan(torch.zeros(8, dtype=torch.int64), idx, w, 1, "cuda"))
        xs.append(torch.randn(1, H, device="cuda").bfloat16())
        if fmt == "bf16":
            stacks.append((G[idx].contiguous(), U[idx].contiguous(), D[idx].contiguous(), w.cuda()))
    h = torch.empty(8, I, dtype=torch.float32, device="cuda")
    out = torch.zeros(1, H, device="cuda")

    def ours():
        for r in range(n_rot):
            gpu.launch_decode_raw(slab, plans[r], xs[r], h, out, 8)

    t_graph = graph_time_us(ours, n_rot)
    t_eager = cuda_time_us(ours, 3) / n_rot
    # A/B in the same run, each knob set explicitly (the defaults differ per format): phase 1
    # streaming (S) or one warp per row (R), phase 2 async (A) or register loads (G), PDL on/off
    variants = {}
    for name, env in (
        ("pdl_off", {"HM_DECODE_PDL": "0"}),
        ("pdl_on", {"HM_DECODE_PDL": "1"}),
        ("SA_pdl", {"HM_DECODE_STREAM": "1", "HM_DECODE_DOWN": "1", "HM_DECODE_PDL": "1"}),
        ("SA_nopdl", {"HM_DECODE_STREAM": "1", "HM_DECODE_DOWN": "1", "HM_DECODE_PDL": "0"}),
        ("SG_pdl", {"HM_DECODE_STREAM": "1", "HM_DECODE_DOWN": "0", "HM_DECODE_PDL": "1"}),
        ("SG_nopdl", {"HM_DECODE_STREAM": "1", "HM_DECODE_DOWN": "0", "HM_DECODE_PDL": "0"}),
        ("RG_pdl", {"HM_DECODE_STREAM": "0", "HM_DECODE_DOWN": "0", "HM_DECODE_PDL": "1"}),
        ("RG_nopdl", {"HM_DECODE_STREAM": "0", "HM_DECODE_DOWN": "0", "HM_DECODE_PDL": "0"}),
    ):
        os.environ.update(env)
        try:
            variants[name] = graph_time_us(ours, n_rot)
        finally:
            for k in env:
                del os.environ[k]
    t_graph_nopdl = variants["pdl_off"]
    bytes_ = 8 * lay["weight_bytes"]
    res = {
        "format": fmt,
        "weight_bytes": bytes_,
        "ours_graph_us": t_graph,
        "ours_eager_us": t_eager,
        "ours_graph_us_pdl_off": t_graph_nopdl,
        **{f"ours_graph_us_{k}": v for k, v in variants.items()},
        "ours_GBps": bytes_ / t_graph / 1e3,
        "hbm_copy_GBps": hbm,
        "fraction_of_hbm": bytes_ / t_graph / 1e3 / hbm,
    }
    if fmt == "bf16":

        def torch_bmm():
            for r in range(n_rot):
                g, u, d, w = stacks[r]
                xb = xs[r].expand(8, H).unsqueeze(-1)
                hh = torch.nn.functional.silu(torch.bmm(g, xb)) * torch.bmm(u, xb)
                y = torch.bmm(d, hh).squeeze(-1)
                out.add_((w[:, None] * y.float()).sum(0, keepdim=True))

        res["torch_bmm_graph_us"] = graph_time_us(torch_bmm, n_rot)
        res["torch_bmm_eager_us"] = cuda_time_us(torch_bmm, 3) / n_rot
        res["speedup_vs_bmm_graph"] = res["torch_bmm_graph_us"] / t_graph
        res["speedup_vs_bmm_eager"] = res["torch_bmm_eager_us"] / t_graph
    return res


def bench_prefill(fmt, n_exp, T=512, k=8):
    _store, slab, _mv, G, U, D = filled(fmt, n_exp)
    gen = torch.Generator().manual_seed(2)
    slots = torch.stack([torch.randperm(n_exp, generator=gen)[:k] for _ in range(T)]).reshape(-1)
    tokens = torch.arange(T).repeat_interleave(k)
    w = torch.rand(T * k, generator=gen) + 0.1
    x = torch.randn(T, H, device="cuda").bfloat16()
    out = torch.zeros(T, H, device="cuda")
    t_ours = cuda_time_us(lambda: gpu.run_prefill(slab, x, tokens, slots, w, out=out), 5)
    res = {"format": fmt, "T": T, "top_k": k, "experts": n_exp, "ours_us": t_ours}
    # torch over the same experts (bf16 weights): sort pairs by expert once (routing is given)
    order = torch.argsort(slots, stable=True)
    s_tok, s_exp, s_w = tokens[order].cuda(), slots[order], w[order].cuda()
    counts = torch.bincount(s_exp, minlength=n_exp)
    offs = torch.cumsum(counts, 0).to(torch.int32).cuda()
    W1 = torch.cat([G, U], dim=1)  # [E, 2I, H]

    def torch_grouped():
        xs = x[s_tok]
        gu = torch._grouped_mm(xs, W1.transpose(1, 2), offs=offs)
        hh = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
        y = torch._grouped_mm(hh, D.transpose(1, 2), offs=offs)
        out.index_add_(0, s_tok, (y.float() * s_w[:, None]))

    bounds = torch.cumsum(counts, 0).tolist()

    def torch_loop():
        xs = x[s_tok]
        ys = []
        beg = 0
        for e, end in enumerate(bounds):
            if end > beg:
                xe = xs[beg:end]
                ys.append((torch.nn.functional.silu(xe @ G[e].T) * (xe @ U[e].T)) @ D[e].T)
            beg = end
        out.index_add_(0, s_tok, torch.cat(ys).float() * s_w[:, None])

    try:
        res["torch_grouped_mm_us"] = cuda_time_us(torch_grouped, 5)
        res["ratio_ours_over_grouped_mm"] = t_ours / res["torch_grouped_mm_us"]
    except Exception as exc:  # torch without _grouped_mm for this GPU
        res["torch_grouped_mm_error"] = f"{type(exc).__name__}: {exc}"[:200]
    res["torch_loop_us"] = cuda_time_us(torch_loop, 3)
    res["ratio_ours_over_loop"] = t_ours / res["torch_loop_us"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="results_gpu.json")
    ap.add_argument("--quick", action="store_true", help="fewer experts and repeats")
    ap.add_argument(
        "--ncu",
        action="store_true",
        help="only 2 eager BF16 and 2 Q8_0 decodes (8 experts x 1 token), for a profiler",
    )
    args = ap.parse_args()
    if args.ncu:
        for fmt in ("bf16", "q8_0"):
            _, slab, _, *_ = filled(fmt, 16)
            h = torch.empty(8, I, dtype=torch.float32, device="cuda")
            out = torch.zeros(1, H, device="cuda")
            x = torch.randn(1, H, device="cuda").bfloat16()
            for _ in range(2):
                idx = torch.randperm(16)[:8]
                tok0 = torch.zeros(8, dtype=torch.int64)
                plan = gpu.device_plan(tok0, idx, torch.rand(8) + 0.1, 1, "cuda")
                gpu.launch_decode_raw(slab, plan, x, h, out, 8)
            torch.cuda.synchronize()
        return
    n_exp = 32 if args.quick else 128
    reps = 3 if args.quick else 5
    res = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    res["pinned_peak"] = pinned_peak_gbps(reps)
    res["copy"] = [bench_copy(f, 16, 64, reps) for f in ("q8_0", "bf16")]
    hbm = hbm_gbps()
    res["decode"] = [
        bench_decode("bf16", n_exp, 16, hbm),
        bench_decode("q8_0", min(n_exp, 64), 8, hbm),
    ]
    res["prefill"] = [bench_prefill("bf16", n_exp), bench_prefill("q8_0", min(n_exp, 64))]
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    pk = res["pinned_peak"]["pinned_256MiB_GBps"]
    print(f"\n== GPU side, {res['device']}, {res['date']} ==")
    for c in res["copy"]:
        print(
            f"copy {c['format']:5s} {c['expert_bytes'] / 1e6:.1f} MB: "
            f"alone {c['mover_alone_GBps']:.1f} GB/s, "
            f"16 CPU threads {c['mover_with_16_cpu_threads_GBps']:.1f} GB/s = "
            f"{100 * c['mover_with_16_cpu_threads_GBps'] / pk:.0f}% of pinned peak {pk:.1f}"
        )
        print(
            f"  under load: torch 256 MiB {c['torch_pinned_256MiB_with_16_cpu_threads_GBps']:.1f}, "
            f"mover 16 queued {c['mover16_with_16_cpu_threads_GBps']:.1f}, 15 CPU threads "
            f"{c['mover_with_15_cpu_threads_GBps']:.1f} GB/s; CPU load DRAM alone "
            f"{c['cpu_load_alone_GBps']:.1f}, during copies "
            f"{c['cpu_load_during_copies_GBps']:.1f} GB/s"
        )
    for d in res["decode"]:
        extra = (
            (
                f", torch bmm graph {d['torch_bmm_graph_us']:.1f} us / "
                f"eager {d['torch_bmm_eager_us']:.1f} us "
                f"-> {d['speedup_vs_bmm_graph']:.1f}x / {d['speedup_vs_bmm_eager']:.1f}x"
            )
            if "torch_bmm_graph_us" in d
            else ""
        )
        print(
            f"decode {d['format']:5s} 8x1: {d['ours_graph_us']:.1f} us "
            f"({d['ours_GBps']:.0f} GB/s = "
            f"{100 * d['fraction_of_hbm']:.0f}% of HBM {d['hbm_copy_GBps']:.0f}; PDL off "
            f"{d['ours_graph_us_pdl_off']:.1f} us, "
            f"on {d['ours_graph_us_pdl_on']:.1f} us){extra}\n  "
            + ", ".join(
                f"{k} {d['ours_graph_us_' + k]:.1f}"
                for k in ("SA_pdl", "SA_nopdl", "SG_pdl", "SG_nopdl", "RG_pdl", "RG_nopdl")
            )
            + " us (S/R: phase 1 streaming / row grid; A/G: phase 2 async / register loads)"
        )
    for p in res["prefill"]:
        g = p.get("torch_grouped_mm_us")
        gs = (
            f"grouped_mm {g:.0f} us (ratio {p['ratio_ours_over_grouped_mm']:.2f})"
            if g
            else p.get("torch_grouped_mm_error", "")
        )
        print(
            f"prefill {p['format']:5s} T=512: ours {p['ours_us']:.0f} us, torch {gs}, "
            f"loop {p['torch_loop_us']:.0f} us"
        )


if __name__ == "__main__":
    main()
