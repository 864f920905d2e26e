"""`hybrid-moe calibrate`: measure CPU, GPU and copy costs here and write a hardware profile."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="measure CPU/GPU/copy costs (< 1 min) and write a profile JSON"
    )
    p.add_argument(
        "--out",
        help="profile JSON to write (default: ~/.cache/hybrid_moe/profiles/<hostname>.json, "
        "which load_profile('<hostname>') finds)",
    )
    p.add_argument(
        "--base",
        default="consumer-4090",
        help="profile for what is not measured (layer_fixed_us; GPU and copies without CUDA)",
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller memory pool")
    p.add_argument(
        "--formats", default="bf16,q8_0", help="comma list of weight formats to calibrate"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the physical cores)"
    )
    p.add_argument("--tokens", default=None, help="CPU token counts per expert (default 1,4,16,64)")
    p.add_argument(
        "--pool-mib",
        type=float,
        default=None,
        help="MiB of experts the CPU measurement rotates through (default 1024; 640 quick)",
    )
    p.add_argument(
        "--hidden", type=int, default=2048, help="expert hidden size (default Qwen3-30B-A3B)"
    )
    p.add_argument("--intermediate", type=int, default=768, help="expert intermediate size")
    p.add_argument(
        "--no-gpu", action="store_true", help="measure the CPU only (GPU/copy from --base)"
    )
    p.add_argument("--name", help="profile name (default: the hostname)")
    p.set_defaults(func=run)


def parse_tokens(spec: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--tokens must be a comma list of integers, got {spec!r}") from None
    if len(set(vals)) < 2 or min(vals) < 1:
        raise ValueError(f"--tokens needs at least two distinct counts >= 1, got {spec!r}")
    return vals


def run(args) -> int:
    import dataclasses
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from hybrid_moe.calibrate import (
        CalibrationPlan,
        calibrate,
        comparison_rows,
        default_out_path,
        write_profile,
    )
    from hybrid_moe.cost_model import load_profile

    t0 = time.perf_counter()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    plan = CalibrationPlan.quick() if args.quick else CalibrationPlan()
    if args.tokens:
        plan = dataclasses.replace(plan, tokens=parse_tokens(args.tokens))
    if args.pool_mib is not None:
        plan = dataclasses.replace(plan, pool_mib=args.pool_mib)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    load_profile(args.base)  # a bad --base fails before anything is measured
    out = args.out or str(default_out_path())
    if not out.endswith(".json"):
        raise ValueError(f"--out must name a .json file, got {out!r}")
    console = Console()
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        prof = calibrate(
            quick=args.quick,
            plan=plan,
            base=args.base,
            formats=formats,
            threads=args.threads,
            hidden=args.hidden,
            intermediate=args.intermediate,
            use_gpu=False if args.no_gpu else None,
            name=args.name,
            progress=progress,
        )
    path = write_profile(prof, out)

    table = Table(
        title=f"calibration of {prof['name']}: measured vs fitted (cost model from the profile)"
    )
    for col in ("what", "format", "size", "measured us", "fitted us", "fitted/measured"):
        table.add_column(col, justify="left" if col in ("what", "format", "size") else "right")
    for r in comparison_rows(prof):
        table.add_row(
            r["what"],
            r["format"],
            r["size"],
            f"{r['measured_us']:.1f}",
            f"{r['fitted_us']:.1f}",
            f"{r['ratio']:.2f}",
        )
    console.print(table)
    c, g, cp = prof["cpu"], prof["gpu"], prof["copy"]
    src = prof["calibration"]["sources"]
    console.print(
        f"cpu: DRAM {c['dram_read_gbps']:.1f} GB/s, "
        f"expert overhead {c['expert_overhead_us']:.1f} us, "
        + ", ".join(
            f"{f} efficiency {prof['formats'][f]['cpu_efficiency']:.2f} "
            f"/ {prof['formats'][f]['cpu_tflops']:.2f} TFLOP/s"
            for f in formats
        )
    )
    console.print(
        f"gpu ({src['gpu']}): VRAM {g['vram_gbps']:.0f} GB/s, "
        f"expert {g['expert_overhead_us']:.1f} us, "
        f"layer {g['layer_overhead_us']:.1f} us; copy ({src['copy']}): {cp['h2d_gbps']:.1f} GB/s + "
        f"{cp['latency_us']:.1f} us"
    )
    if src["gpu"] != "measured":
        console.print(
            f"[yellow]no CUDA: GPU and copy numbers are NOT measured, they come from base profile "
            f"{prof['calibration']['base_profile']!r}[/yellow]"
        )
    console.print(f"layer_fixed_us {prof['layer_fixed_us']:.0f} from {src['layer_fixed_us']}")
    elapsed = time.perf_counter() - t0
    console.print(
        f"wrote {path} (load_profile({prof['name']!r}) finds it when it is in the default folder); "
        f"elapsed {elapsed:.1f} s"
    )
    return 0
