"""`hybrid-moe bench decode`: end-to-end decode benchmark of the runtime (bench_decode.py)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: decode (end to end, every policy and budget)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    d = bsub.add_parser(
        "decode", help="per-token decode latency and tokens/s vs simulator and bandwidth bound"
    )
    d.add_argument("--trace", action="append", default=[], help="routing trace file (repeatable)")
    d.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="PRESET",
        help="synthetic routing of a model preset (repeatable; default qwen3-30b-a3b "
        "when no --trace)",
    )
    d.add_argument("--formats", default="bf16,q8_0")
    d.add_argument(
        "--budgets", default="10%,25%,50%", help="comma list of percentages or fractions"
    )
    d.add_argument("--policies", default="cpu,static,lru,lru-fetch,value")
    d.add_argument("--layers", type=int, default=48, help="MoE layers (48: the full Qwen3-30B-A3B)")
    d.add_argument(
        "--tokens", type=int, default=64, help="measured decode tokens per configuration"
    )
    d.add_argument("--warmup", type=int, default=16, help="decode tokens before timing")
    d.add_argument("--hidden", type=int, default=2048)
    d.add_argument("--intermediate", type=int, default=768)
    d.add_argument(
        "--profile",
        default=None,
        help="calibrated profile name or path (default: this host's `hybrid-moe calibrate` output)",
    )
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    d.add_argument(
        "--hint-accuracy",
        type=float,
        default=0.8,
        help="next-layer prefetch hint accuracy (0: value runs without a next-layer router)",
    )
    d.add_argument(
        "--no-graph",
        action="store_true",
        help="run each token eagerly from Python instead of replaying one captured CUDA graph",
    )
    d.add_argument(
        "--no-timeline", action="store_true", help="do not record the per-layer timeline"
    )
    d.add_argument(
        "--cold-start",
        action="store_true",
        help="lru, lru-fetch and value start from an empty cache (default: from static's "
        "placement)",
    )
    d.add_argument(
        "--static-profile",
        metavar="HEAT_JSON",
        help="place static (and the warm start) by this co-activation profile of other prompts "
        "(layers[].heat, e.g. ../shared/traces/qwen3-30b-a3b.coactivation.json), as "
        "KTransformers' frequency placement is; default: the source's own later tokens",
    )
    d.add_argument(
        "--value-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a value-policy tunable (repeatable), e.g. stall_weight=1 (names: "
        "hybrid_moe.policies.VALUE_PARAMS; defaults in csrc/core/policy.h)",
    )
    d.add_argument(
        "--value-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run the value policy with these tunables as policy NAME (must start with "
        "'value-'), e.g. value-s1:stall_weight=1: an A/B in the same runtime (repeatable)",
    )
    d.add_argument("--quick", action="store_true", help="6 layers, 12 warm-up + 32 measured tokens")
    d.add_argument("--json", help="write every configuration's numbers as JSON")
    d.add_argument("--plot", help="write a plot (PNG) of tokens/s against budget per policy")
    d.set_defaults(func=run_decode_bench)


def parse_budgets(spec: str) -> tuple[float, ...]:
    out = []
    for s in (x.strip() for x in spec.split(",") if x.strip()):
        try:
            v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
        except ValueError:
            raise ValueError(f"--budgets must be percentages or fractions, got {s!r}") from None
        if not 0 < v <= 1:
            raise ValueError(f"--budgets values must be in (0%, 100%], got {s!r}")
        out.append(v)
    if not out:
        raise ValueError("--budgets needs at least one value, e.g. 25%")
    return tuple(out)


def parse_value_variants(items: list[str]) -> dict[str, dict]:
    """['value-s1:stall_weight=1,halflife_steps=12'] -> {'value-s1': {...}} (validated)."""
    from hybrid_moe.policies import parse_value_params

    out: dict[str, dict] = {}
    for item in items:
        name, sep, spec = item.partition(":")
        name = name.strip()
        if not sep or not name.startswith("value-") or name in out:
            raise ValueError(
                f"--value-variant expects NAME:KEY=VALUE[,KEY=VALUE] with a new NAME starting "
                f"with 'value-', got {item!r}"
            )
        out[name] = parse_value_params(
            [p for p in spec.split(",") if p.strip()], flag=f"--value-variant {name}"
        )
    return out


def run_decode_bench(args) -> int:
    import time

    from rich.console import Console
    from rich.progress import Progress

    from hybrid_moe import bench_decode as bd
    from hybrid_moe.calibrate import default_out_path

    t0 = time.perf_counter()
    profile = args.profile
    if profile is None:
        path = default_out_path()
        if not path.exists():
            raise ValueError(
                f"no calibrated profile at {path}: run `hybrid-moe calibrate` first or pass "
                "--profile"
            )
        profile = str(path)
    sources = list(args.trace) + [f"synthetic:{s}" for s in args.synthetic]
    if not sources:
        sources = ["synthetic:qwen3-30b-a3b"]
    from hybrid_moe.policies import parse_value_params

    variants = parse_value_variants(args.value_variant)
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    cfg = bd.DecodeBenchConfig(
        sources=tuple(sources),
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        budgets=parse_budgets(args.budgets),
        policies=policies + tuple(v for v in variants if v not in policies),
        layers=args.layers,
        tokens=args.tokens,
        warmup=args.warmup,
        hidden=args.hidden,
        intermediate=args.intermediate,
        profile=profile,
        threads=args.threads,
        device=args.device,
        hint_accuracy=args.hint_accuracy,
        graph=not args.no_graph,
        timeline=not args.no_timeline,
        warm_start=not args.cold_start,
        static_profile=args.static_profile,
        value_params=parse_value_params(args.value_param),
        value_variants=variants,
    )
    if args.quick:
        cfg = bd.quick_config(cfg)
    console = Console()
    with Progress(console=console, transient=True) as progress:
        result = bd.run_benchmark(
            cfg, progress=progress, log=lambda s: progress.console.print(s, highlight=False)
        )
    console.print(bd.table(result))
    if result["targets"]:
        console.print(bd.targets_table(result))
    for n in result["notes"]:
        console.print(f"note: {n}")
    if args.json:
        bd.write_json(result, args.json)
    if args.plot:
        bd.plot(result, args.plot)
    console.print(f"elapsed {time.perf_counter() - t0:.1f} s")
    return 0
