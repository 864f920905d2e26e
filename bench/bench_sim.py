"""Decision engine benchmark: policies x budgets on the dev trace and a synthetic trace (simulated
tokens/s, hit rates, the issue-3 targets), and the simulator's own speed in layer-steps/s.

    python bench/bench_sim.py --out bench/bench_sim.json
Baselines in the same run: static, lru, lfu, lru-fetch (best of them) and oracle (hit-rate bound).
Simulator speed: median of --repeats runs of the value policy on the synthetic trace (one core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hybrid_moe.sim import simulate
from hybrid_moe.traces import load_trace, synthetic_trace

BASELINES = ("static", "lru", "lfu", "lru-fetch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev-trace", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                               "traces" / "qwen3-30b-a3b.top6.route.csv"))
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--profile", default="consumer-4090")
    ap.add_argument("--budgets", default="10%,25%")
    ap.add_argument("--predictor-accuracy", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_sim.json")
    args = ap.parse_args()

    traces = {"dev": load_trace(args.dev_trace),
              "synthetic": synthetic_trace("qwen3-30b-a3b", args.tokens, seed=0)}
    rows = []
    for name, tr in traces.items():
        for b in args.budgets.split(","):
            res = {p: simulate(tr, args.profile, p, b, predictor_accuracy=args.predictor_accuracy,
                               model="qwen3-30b-a3b")
                   for p in ("cpu", *BASELINES, "value", "oracle")}
            best = max(BASELINES, key=lambda p: res[p]["tokens_per_s"])
            lru, orc, val = (res[p]["hit_rate"] for p in ("lru", "oracle", "value"))
            row = {
                "trace": name, "budget": b,
                "tokens_per_s": {p: r["tokens_per_s"] for p, r in res.items()},
                "hit_rate": {p: r["hit_rate"] for p, r in res.items()},
                "best_baseline": best,
                "value_speedup_vs_best_baseline": res["value"]["tokens_per_s"] /
                res[best]["tokens_per_s"],
                "value_gap_closed_lru_to_oracle": (val - lru) / (orc - lru) if orc > lru else None,
            }
            rows.append(row)
            print(f"{name:9s} {b:4s} " + " ".join(
                f"{p}={res[p]['tokens_per_s']:.1f}/{res[p]['hit_rate']:.3f}" for p in res) +
                f" | value/{best}={row['value_speedup_vs_best_baseline']:.3f}"
                f" gap_closed={row['value_gap_closed_lru_to_oracle']:.2f}", flush=True)
    tr = traces["synthetic"]
    speed = {}
    for p in ("lru", "value", "oracle"):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = simulate(tr, args.profile, p, "25%", model="qwen3-30b-a3b")
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        speed[p] = {"layer_steps": r["layer_steps"], "median_s": med,
                    "layer_steps_per_s": r["layer_steps"] / med}
        print(f"simulator {p}: {r['layer_steps']} layer-steps in {med:.3f} s (median of "
              f"{args.repeats}) = {r['layer_steps'] / med / 1e6:.2f} M layer-steps/s")
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "speed": speed},
                                         indent=1))


if __name__ == "__main__":
    main()
