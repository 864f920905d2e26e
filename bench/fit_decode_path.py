"""Fit the profile's live-decode-path costs to a `hybrid-moe bench decode` run, and check them.

    python bench/fit_decode_path.py RUN/decode_bf16.json RUN/decode_q8_0.json \
        --profile RUN/profile.json --trace ../shared/traces/qwen3-30b-a3b.top6.route.csv

The simulator predicts `cpu` within a few percent once layer_fixed_us is fitted on it, but it
over-predicts every policy that runs experts on the GPU, and most of all those that copy
(bench/RESULTS.md, session 2). Two profile fields (section "decode", cost_model.h) describe what
the kernel-level calibration cannot see:
  decode_gpu_layer_us   per decode layer with GPU experts: the hand-off to the GPU path
  copy_stall_fraction   share of each expert copy's time the decode step cannot overlap
This script fits both on a small FIT set (default: the real trace, bf16, 25%, policies static and
lru: one configuration without copies, one with; both formats) by a grid search on
|log(measured / predicted)|,
and reports every other configuration of the run as out-of-sample checks. Predictions are the
benchmark's own (bench_decode.simulate_same: same routing, same static placement, warm start as
the run had it, the policies' default parameters) plus its layer_fixed_us shift fitted on `cpu`.
Session 2's runs placed the synthetic `static` from another draw (seed + 1):
`--synthetic-static-seed-offset 1` reproduces those; later runs use the same draw (0, default).
Prints a table and the fitted values; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np

from hybrid_moe import bench_decode as bd
from hybrid_moe.cost_model import load_profile


def _routing(row_source: str, cfg: dict, trace_paths: list[str], static_seed_offset: int):
    """(replayed decode RouteTrace, static use counts) of one source of the run."""
    source = row_source
    if not row_source.startswith("synthetic"):
        source = next((p for p in trace_paths if Path(p).name == row_source), None)
        if source is None:
            raise ValueError(f"the run replayed {row_source!r}: pass it with --trace")
    else:
        source = "synthetic:" + row_source.split(" ", 1)[1]
    c = bd.DecodeBenchConfig(
        sources=(source,),
        layers=cfg["layers"],
        tokens=cfg["tokens"],
        warmup=cfg["warmup"],
        hint_accuracy=cfg["hint_accuracy"],
        seed=cfg["seed"],
        device="cpu",
        policies=("cpu",),
    )
    n_steps = c.warmup + c.tokens
    trace, _ = bd.load_source(source, n_steps + bd.STATIC_EXTRA_STEPS, c.seed)
    ids, w, _ = bd.decode_routing(trace, c.layers, n_steps)
    replayed = bd.routing_trace(ids, w, trace.n_expert, trace.model)
    if source.startswith("synthetic:") and static_seed_offset:
        other, _ = bd.load_source(source, max(n_steps, 256), c.seed + static_seed_offset)
        oids, _, _ = bd.decode_routing(other, c.layers, max(n_steps, 256))
        freq = np.zeros((c.layers, trace.n_expert))
        for li in range(c.layers):
            np.add.at(freq[li], oids[:, li, :].reshape(-1), 1.0)
    else:
        freq = bd.static_frequency(source, trace, c, n_steps, [])
    return replayed, freq


def predict_us(row, routing, profile, cfg, gpu_layer_us, stall_fraction, layer_fixed=None) -> float:
    """Mean decode step latency (us) the simulator predicts for one row with the given fields,
    exactly as the benchmark computed its `sim` column (bench_decode.simulate_same)."""
    trace, freq = routing
    prof = dict(profile)
    if layer_fixed is not None:
        prof["layer_fixed_us"] = float(layer_fixed)
    prof["decode"] = {"decode_gpu_layer_us": gpu_layer_us, "copy_stall_fraction": stall_fraction}
    r = bd.simulate_same(
        trace,
        prof,
        row["policy"],
        float(row["budget"]),
        row["format"],
        cfg["hidden"],
        cfg["intermediate"],
        cfg["warmup"],
        cfg["hint_accuracy"],
        freq,
        bool(cfg.get("warm_start", False)),
    )
    return r["sim_mean_us"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="JSON files of `hybrid-moe bench decode --json`")
    ap.add_argument("--profile", required=True, help="the profile the run used (path or name)")
    ap.add_argument("--trace", action="append", default=[], help="trace files the run replayed")
    ap.add_argument("--fit-source", default="qwen3-30b-a3b.top6.route.csv")
    ap.add_argument("--fit-format", default="bf16,q8_0", help="comma list")
    ap.add_argument("--fit-budget", type=float, default=0.25)
    ap.add_argument("--fit-policies", default="static,lru")
    ap.add_argument("--synthetic-static-seed-offset", type=int, default=0)
    ap.add_argument(
        "--fit-layer-fixed",
        action="store_true",
        help="fit layer_fixed_us too (cpu rows join the fit set) instead of shifting each "
        "(source, format) by its cpu row",
    )
    ap.add_argument("--json", help="write the fit and every row's check here")
    args = ap.parse_args()

    profile = load_profile(args.profile)
    rows, cfg = [], None
    for path in args.runs:
        res = json.loads(Path(path).read_text())
        cfg = cfg or res["config"]
        rows += res["rows"]
    routings = {
        s: _routing(s, cfg, args.trace, args.synthetic_static_seed_offset)
        for s in sorted({r["source"] for r in rows})
    }
    # layer_fixed_us per (source, format) from its cpu row, as the benchmark's sim_fit does.
    shift = {}
    for key in {(r["source"], r["format"]) for r in rows}:
        cpu = next(r for r in rows if (r["source"], r["format"]) == key and r["policy"] == "cpu")
        shift[key] = (
            0.0
            if args.fit_layer_fixed
            else cpu["mean_us"] - predict_us(cpu, routings[key[0]], profile, cfg, 0, 0)
        )

    def pred(r, g, f, lf=None):
        return (
            predict_us(r, routings[r["source"]], profile, cfg, g, f, lf)
            + shift[(r["source"], r["format"])]
        )

    fit_pol = args.fit_policies.split(",") + (["cpu"] if args.fit_layer_fixed else [])
    fit_rows = [
        r
        for r in rows
        if r["source"] == args.fit_source
        and r["format"] in args.fit_format.split(",")
        and abs(r["budget"] - args.fit_budget) < 1e-9
        and r["policy"] in fit_pol
    ]
    if len(fit_rows) != len(fit_pol) * len(args.fit_format.split(",")):
        raise ValueError(f"the run has no row for every fit policy {fit_pol} at the fit point")
    best = None
    lfs = np.arange(0.0, 81.0, 4.0) if args.fit_layer_fixed else [None]
    for lf in lfs:
        for g in np.arange(0.0, 120.0, 2.0 if lf is None else 4.0):
            for f in np.arange(0.0, 1.21, 0.04):
                err = sum(abs(math.log(r["mean_us"] / pred(r, g, f, lf))) for r in fit_rows)
                if best is None or err < best[0]:
                    best = (err, float(g), float(f), lf)
    _, g, f, lf = best
    print(
        f"fitted on {len(fit_rows)} rows: decode_gpu_layer_us = {g:.0f}, "
        f"copy_stall_fraction = {f:.2f}"
        + (f", layer_fixed_us = {lf:.0f}" if lf is not None else "")
    )
    checks = []
    for r in rows:
        if r["policy"] == "cpu" and (r["budget"] != args.fit_budget or not args.fit_layer_fixed):
            continue  # cpu is budget-free: one row per (source, format), and only when fitted
        p = pred(r, g, f, lf)
        checks.append(
            {
                "source": r["source"],
                "format": r["format"],
                "budget": r["budget"],
                "policy": r["policy"],
                "measured_us": r["mean_us"],
                "predicted_us": p,
                "measured_over_predicted": r["mean_us"] / p,
                "measured_over_sim_fit_before": r.get("measured_over_sim_fit"),
                "in_fit_set": r in fit_rows,
            }
        )
        c = checks[-1]
        print(
            f"{c['source'][:22]:22s} {c['format']:5s} {c['budget']:4.0%} {c['policy']:9s} "
            f"measured/predicted {c['measured_over_predicted']:5.2f} (before "
            f"{c['measured_over_sim_fit_before'] or float('nan'):5.2f})"
            + ("  [fit]" if c["in_fit_set"] else "")
        )
    out = [c["measured_over_predicted"] for c in checks if not c["in_fit_set"]]
    within = sum(1 / 1.25 <= x <= 1.25 for x in out)
    before = [c["measured_over_sim_fit_before"] for c in checks if not c["in_fit_set"]]
    within_before = sum(x is not None and 1 / 1.25 <= x <= 1.25 for x in before)
    print(
        f"out of sample: {len(out)} rows, median measured/predicted {statistics.median(out):.2f}, "
        f"{within} within 1.25x (before: {within_before})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "decode_gpu_layer_us": g,
                    "copy_stall_fraction": f,
                    "layer_fixed_us": lf,
                    "checks": checks,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
