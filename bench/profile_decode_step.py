"""Where a decode step's GPU time goes: torch.profiler (CUPTI) over replayed decode steps.

    python bench/profile_decode_step.py --layers 48 --policy static --budget 0.25 \
        --source ../shared/traces/<trace>.csv --json prof.json --chrome prof_trace.json

Builds the `hybrid-moe bench decode` model (same routing, weights, CUDA-graph replay), times
--tokens steps as the benchmark does, then profiles --profile-steps more. Printed: the kernels by
total GPU time per step, and for the fused decode hand-off (cuda/decode_handoff.h) the median
per-layer phases read from the GPU's own timestamps:
    stage        the stage kernel (inputs -> mapped host memory, ring `ready`)
    go_wait      stage end -> phase 1 start: the planner notices, plans, rings `go`, and the
                 stream's wait sees it (host notice + plan + PCIe both ways)
    experts      phase 1 start -> phase 2 end (the GPU's experts; 0 when it has none)
    to_finish    phase 2 end -> finish start
    finish       the finish kernel: rings kdone, waits for the CPU's partial sums, writes out
    between      finish end -> next layer's stage: the model's own ops (residual, norm, router)
Medians over every layer of the profiled steps. The wall-clock step latency and tokens/s are the
benchmark's (host clock, blocking event), printed for reference."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from hybrid_moe import bench_decode as bd
from hybrid_moe.cost_model import load_profile

PHASES = ("stage", "go_wait", "experts", "to_finish", "finish", "between", "layer")


def _gpu_events(prof) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of every GPU activity (kernels, copies, memsets), by start."""
    out = []
    for e in prof.events():
        tr = getattr(e, "time_range", None)
        if e.device_type == torch.autograd.DeviceType.CUDA and tr is not None:
            out.append((e.name, float(tr.start), float(tr.end)))
    return sorted(out, key=lambda t: t[1])


def layer_phases(events: list[tuple[str, float, float]]) -> dict[str, list[float]]:
    """Per-layer phase durations (us) from the fused hand-off's kernel names (module note)."""
    ph: dict[str, list[float]] = {p: [] for p in PHASES}
    cur: dict[str, float] = {}
    last_finish_end = None
    for name, t0, t1 in events:
        if "decode_stage_kernel" in name:
            if last_finish_end is not None:
                ph["between"].append(t0 - last_finish_end)
            cur = {"stage0": t0, "stage1": t1}
        elif cur and ("gate_up" in name) and "p1" not in cur:
            cur["p1"] = t0
        elif cur and ("down" in name):
            cur["p2"] = t1
        elif cur and "decode_finish_kernel" in name:
            ph["stage"].append(cur["stage1"] - cur["stage0"])
            first = cur.get("p1", t0)
            ph["go_wait"].append(first - cur["stage1"])
            ph["experts"].append(cur.get("p2", first) - first)
            ph["to_finish"].append(t0 - cur.get("p2", first))
            ph["finish"].append(t1 - t0)
            ph["layer"].append(t1 - cur["stage0"])
            last_finish_end = t1
            cur = {}
    return ph


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="synthetic:qwen3-30b-a3b", help="trace CSV or synthetic:")
    ap.add_argument("--format", default="bf16", choices=("bf16", "q8_0"))
    ap.add_argument("--policy", default="static")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--profile-steps", type=int, default=4)
    ap.add_argument("--profile", default="h200-lent", help="cost profile name or JSON path")
    ap.add_argument("--no-graph", action="store_true", help="eager steps instead of graph replay")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--chrome", help="write the profiler's Chrome trace here")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_decode_step: needs a CUDA device", file=sys.stderr)
        return 2
    cfg = bd.DecodeBenchConfig(
        sources=(a.source,),
        formats=(a.format,),
        budgets=(a.budget,),
        policies=(a.policy,),
        layers=a.layers,
        tokens=a.tokens,
        warmup=a.warmup,
        profile=a.profile,
        graph=not a.no_graph,
    )
    cfg.validate()
    profile = load_profile(cfg.profile)
    notes: list[str] = []
    src = bd._prepare_source(a.source, cfg, notes)
    weights = bd.random_layer_weights(a.format, src.trace.n_expert, cfg.hidden, cfg.intermediate)
    rt, layers = bd.make_model(
        weights,
        cfg.layers,
        src.trace.top_k,
        a.policy,
        a.budget,
        profile,
        None,
        "cuda",
        src.freq if a.policy == "static" else None,
        cfg.hint_accuracy,
        src.router.next_router if a.policy == "value" else None,
    )
    if a.policy not in ("static", "cpu"):
        rt.reconfigure(policy=a.policy, budget=a.budget, frequency=src.freq)
    result: dict = {}

    def after(run) -> None:
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(a.profile_steps):
                run()
            torch.cuda.synchronize()
        if a.chrome:
            prof.export_chrome_trace(a.chrome)
        try:
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        except Exception as e:  # the table is for reading only; keep the numbers below
            print(f"(no key_averages table: {e})")
        ev = _gpu_events(prof)
        ph = layer_phases(ev)
        span = (ev[-1][2] - ev[0][1]) / a.profile_steps if ev else 0.0
        busy = sum(t1 - t0 for _, t0, t1 in ev) / a.profile_steps
        result.update(
            gpu_ops_per_step=len(ev) / a.profile_steps,
            gpu_span_us_per_step=span,
            gpu_busy_us_per_step=busy,
            phases_p50_us={p: statistics.median(v) for p, v in ph.items() if v},
            phases_mean_us={p: statistics.fmean(v) for p, v in ph.items() if v},
            layers_seen=len(ph["layer"]),
        )

    lat = bd.run_decode(
        layers,
        src.router,
        cfg.hidden,
        cfg.tokens,
        cfg.warmup,
        "cuda",
        graph=cfg.graph,
        after=after,
    )
    rt.synchronize()
    p50 = statistics.median(lat)
    result.update(
        source=src.desc,
        format=a.format,
        policy=a.policy,
        budget=a.budget,
        layers=cfg.layers,
        graph=cfg.graph,
        decode_sync=rt.stats().get("decode_sync"),
        step_p50_us=p50,
        tokens_per_s=1e6 / statistics.fmean(lat),
    )
    ops, busy = result.get("gpu_ops_per_step", 0), result.get("gpu_busy_us_per_step", 0)
    print(
        f"{src.desc} {a.format} {a.budget:.0%} {a.policy}: step p50 {p50:.0f} us "
        f"({result['tokens_per_s']:.1f} tok/s), {result['decode_sync']}; GPU per step: "
        f"{ops:.0f} ops, busy {busy:.0f} of {result.get('gpu_span_us_per_step', 0):.0f} us"
    )
    if result.get("phases_p50_us"):
        print(
            "per layer, p50 us: "
            + ", ".join(f"{k} {v:.1f}" for k, v in result["phases_p50_us"].items())
        )
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
