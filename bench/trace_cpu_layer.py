"""Where a CPU layer call's time goes: the pool trace (cpu/pool_trace.h) of back-to-back layer
calls at small T, summarised per call and reported as medians over calls.

Same experts as bench_cpu_experts.py (Qwen3-30B-A3B shape, E=128 x --layers copies cycled so a
call's experts come from DRAM, top-k random routing), ours only. Per call, times in us from the
Python call (t0, perf_counter_ns: the same clock as the trace):
  submit    pool.submit done (argument conversion, validation, job set-up)
  first     first item taken by a worker (wake-up of the spinning workers)
  pN_end    last item of phase N ended (0 pack, 1 gate/up, 2 down)
  finish    the job's last item ended;  return   the call returned to Python (join, binding)
and, summed over the pool's workers between submit and finish (worker-us):
  busy_pN   items of phase N computing;  wait_pN   items of phase N waiting for their
  dependencies (phase barrier, or their expert in dataflow mode; the wait includes warm-up
  prefetches);  idle   no item held, split (JSON, and a line after each row) into before each
  thread's first ticket, between its items and after its last (the tail); last_thread_start:
  when the last of the threads took its first item, us after the submit (NaN when one took none).
Stream rate = bytes of the call's distinct experts / (finish - first). After each row, the DRAM
reader over the same stores (bench_cpu_experts.same_bytes_read) and the fractions of it that the
whole call, the first->finish span and the workers' busy time (bytes / (busy worker-us / threads))
reach.
Calls run back to back (arguments prepared first; the trace is fetched between calls, a few us).
Compare modes with HYBRID_MOE_DATAFLOW=0|1 or HYBRID_MOE_CALLER_HELPS=0|1 (read once per
process: one mode per run). Worker -1 in a trace is the calling thread (caller_pool).

    python bench/trace_cpu_layer.py --threads 16 --tokens 1,4 --formats q8_0r16,bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", os.environ.get("HYBRID_MOE_HUGEPAGES", "1"))

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_experts import bf16_store, make_layers, q8_store, routing, same_bytes_read
from hybrid_moe._native import native
from hybrid_moe.cpu_experts import available_isas


def summarise(tr: dict, t0_ns: int, t1_ns: int, threads: int) -> dict:
    """One call's trace -> the fields of the module docstring (us / worker-us); threads: the
    pool's workers plus the caller when it computes."""
    items, sub, fin = tr["items"], tr["submit_ns"], tr["finish_ns"]
    us = lambda ns: ns / 1e3  # noqa: E731
    row = {
        "submit": us(sub - t0_ns),
        "first": us(items[:, 3].min() - t0_ns),
        "finish": us(fin - t0_ns),
        "return": us(t1_ns - t0_ns),
    }
    held = 0.0
    for p in range(len(tr["phase_items"])):
        it = items[items[:, 1] == p]
        if len(it) == 0:
            continue
        row[f"p{p}_end"] = us(it[:, 5].max() - t0_ns)
        row[f"busy_p{p}"] = us((it[:, 5] - it[:, 4]).sum())
        row[f"wait_p{p}"] = us((it[:, 4] - it[:, 3]).sum())
        held += row[f"busy_p{p}"] + row[f"wait_p{p}"]
    row["idle"] = threads * us(fin - sub) - held
    # The idle time split: before each thread's first ticket, between its items, after its last.
    # (A thread that took no item is idle from submit to finish: counted as before.)
    start = gaps = end = 0.0
    seen = 0
    last_start = 0.0  # when the last thread to start took its first item, us after the submit
    for w in np.unique(items[:, 0]):
        mine = items[items[:, 0] == w]
        mine = mine[np.argsort(mine[:, 3])]
        seen += 1
        start += us(mine[0, 3] - sub)
        last_start = max(last_start, us(mine[0, 3] - sub))
        end += us(fin - mine[:, 5].max())
        gaps += us(np.clip(mine[1:, 3] - mine[:-1, 5], 0, None).sum())
    row["idle_start"] = start + (threads - seen) * us(fin - sub)
    row["idle_gaps"] = gaps
    row["idle_end"] = end
    row["last_thread_start"] = last_start if seen == threads else float("nan")
    row["items"] = len(items)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=int(native.cpu_default_threads()))
    ap.add_argument("--tokens", default="1,4")
    ap.add_argument("--formats", default="q8_0r16,bf16")
    ap.add_argument("--isas", default="", help="comma list (default: the best this machine runs)")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--calls", type=int, default=41, help="timed calls per configuration")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    E, H, I, k, L = a.experts, 2048, 768, a.topk, a.layers
    runnable = available_isas()
    isas = [s for s in a.isas.split(",") if s] or [runnable[-1]]
    for s in isas:
        if s not in runnable:
            raise SystemExit(f"--isas: {s} does not run here (runnable: {runnable})")
    fmts = [f for f in a.formats.split(",") if f]
    stores = {}
    if "bf16" in fmts:
        stores["bf16"] = [bf16_store(*lw) for lw in make_layers(L, E, H, I)]
    if {"q8_0", "q8_0r16"} & set(fmts):
        q8 = [q8_store(E, H, I, s) for s in range(L)]
        stores["q8_0"] = q8
        if "q8_0r16" in fmts:
            stores["q8_0r16"] = [s.with_packing("q8_rows16") for s in q8]
    mode = os.environ.get("HYBRID_MOE_DATAFLOW", "auto")
    out = {"threads": a.threads, "dataflow": mode, "calls": a.calls, "rows": []}
    pool = dict(native.cpu_pool_info(a.threads))
    out["pool"] = pool
    print(
        f"threads {a.threads} ({pool['workers']} workers, caller helps {pool['caller_helps']}), "
        f"HYBRID_MOE_DATAFLOW={mode}; medians over {a.calls} calls, us"
    )
    cols = ["submit", "first", "p0_end", "p1_end", "p2_end", "finish", "return"]
    cols += ["busy_p1", "wait_p1", "busy_p2", "wait_p2", "idle"]
    print(f"{'fmt':8} {'isa':6} {'T':>3} " + " ".join(f"{c:>8}" for c in cols) + "   GB/s")
    for fmt in fmts:
        lst = stores[fmt]
        ptrs = [s.expert_ptr_array() for s in lst]
        ebytes = lst[0].layout["weight_bytes"]
        for isa in isas:
            for T in [int(t) for t in a.tokens.split(",")]:
                calls = []  # arguments first, so that the calls run back to back as in a model
                for c in range(a.calls + 3):
                    ids, w = routing(T, E, k, 7000 * T + c)
                    st = lst[c % L]
                    calls.append(
                        (
                            (st.fmt, H, I, ptrs[c % L], torch.randn(T, H), T),
                            np.repeat(np.arange(T, dtype=np.int32), k),
                            ids.to(torch.int32).reshape(-1).numpy(),
                            w.to(torch.float32).reshape(-1).contiguous().numpy(),
                            torch.zeros(T, H),
                            st.packing,
                            len(ids.unique()),
                        )
                    )
                raw = []
                native.cpu_pool_tracing(True)
                for (fmt_, h, i_, p, x, t), tok, eid, wf, o, packing, distinct in calls:
                    t0 = time.perf_counter_ns()
                    native.cpu_moe_layer(
                        fmt_, h, i_, p, x.data_ptr(), t, tok, eid, wf, o.data_ptr(),
                        a.threads, isa, packing,
                    )  # fmt: skip
                    t1 = time.perf_counter_ns()
                    raw.append((native.cpu_last_pool_trace(), t0, t1, distinct))
                native.cpu_pool_tracing(False)
                rows = []
                for tr, t0, t1, distinct in raw[3:]:  # the first calls warm pool and scratch
                    r = summarise(tr, t0, t1, pool["threads"])
                    r["gbs"] = distinct * ebytes / (r["finish"] - r["first"]) / 1e3
                    r["call_gbs"] = distinct * ebytes / r["return"] / 1e3
                    busy = sum(v for key, v in r.items() if key.startswith("busy_p"))
                    r["busy_gbs"] = distinct * ebytes / (busy / pool["threads"]) / 1e3
                    rows.append(r)
                med = {key: statistics.median(r.get(key, 0.0) for r in rows) for key in rows[0]}
                med.update(fmt=fmt, isa=isa, T=T)
                out["rows"].append(med)
                print(
                    f"{fmt:8} {isa:6} {T:>3} "
                    + " ".join(f"{med.get(c, 0.0):8.1f}" for c in cols)
                    + f"  {med['gbs']:6.1f}",
                    flush=True,
                )
                # The reader over the same stores right after: what the call, its streaming span
                # and its workers' busy time reach of it, and the share before the first item.
                rd = same_bytes_read(lst, a.threads)["best_gbps"]
                med["reader_same_bytes_gbs"] = rd
                print(
                    f"    idle worker-us: before the first ticket {med['idle_start']:.0f}, between "
                    f"items {med['idle_gaps']:.0f}, after the last {med['idle_end']:.0f}; the last "
                    f"thread starts {med['last_thread_start']:.1f} us after the submit",
                    flush=True,
                )
                print(
                    f"    reader over these stores {rd:.1f} GB/s: call {med['call_gbs'] / rd:.2f}, "
                    f"first->finish {med['gbs'] / rd:.2f}, busy workers {med['busy_gbs'] / rd:.2f} "
                    f"of it; before the first item {med['first']:.1f} us "
                    f"({100 * med['first'] / med['return']:.0f}% of the call)",
                    flush=True,
                )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
