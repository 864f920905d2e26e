"""Cold reads of one decode layer's CPU bytes per call, against the steady DRAM read rate.

The decode benchmark's bandwidth bound charges a layer's CPU experts at the DRAM reader's steady
rate (a 2 GiB pass). A layer's CPU call reads only 1-2 experts (9.4 MB each, bf16 Qwen3-30B-A3B)
and pays the job's hand-out and join, every core's ramp-up and the slowest core's tail. This
times a pure read of that many cold bytes per blocking call on the expert kernel's pool
(native.cpu_burst_read, cpu/burst_read.h): the floor a CPU call of that size cannot beat, with
no arithmetic at all. Per (threads, experts per call, item size): median / p10 / p90 us per call,
GB/s, and burst time / bound time (bound = bytes / steady rate, measured in the same run).

    python bench/bench_burst_read.py --threads 16,15 --experts 1,2,4,8 --json burst.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", os.environ.get("HYBRID_MOE_HUGEPAGES", "1"))

from hybrid_moe._native import native
from hybrid_moe.bench_decode import expert_bytes


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", default=str(native.cpu_default_threads()), help="comma list")
    ap.add_argument("--experts", default="1,2,4,8", help="experts' bytes per call, comma list")
    ap.add_argument("--fmt", default="bf16", choices=["bf16", "q8_0"])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--items-kib", default="32,64,256", help="item sizes, comma list")
    ap.add_argument("--bursts", type=int, default=200)
    ap.add_argument("--buffer-mib", type=int, default=2048)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    per_expert = expert_bytes(a.fmt, a.hidden, a.intermediate)
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        steady = float(native.cpu_dram_read_gbps(a.buffer_mib, threads, 5))
        print(f"threads {threads}: steady DRAM read {steady:.1f} GB/s")
        for n in [int(e) for e in a.experts.split(",")]:
            burst = n * per_expert
            bound_us = burst / (steady * 1e3)
            for kib in [int(k) for k in a.items_kib.split(",")]:
                r = dict(native.cpu_burst_read(burst, kib << 10, a.bursts, threads, a.buffer_mib))
                r.update(threads=threads, experts=n, burst_bytes=burst, item_kib=kib)
                over = r["median_us"] / bound_us
                r.update(steady_gbps=steady, bound_us=bound_us, over_bound=over)
                rows.append(r)
                print(
                    f"  {n} x {a.fmt} expert ({burst / 1e6:.1f} MB), items {kib:>4} KiB: "
                    f"{r['median_us']:8.1f} us (p10 {r['p10_us']:.1f}, p90 {r['p90_us']:.1f}) "
                    f"{r['gbps']:6.1f} GB/s = {r['gbps'] / steady:.2f} of steady; "
                    f"{r['over_bound']:.2f}x the bound {bound_us:.1f} us"
                )
    if a.json:
        with open(a.json, "w") as f:
            machine = platform.processor() or platform.machine()
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
