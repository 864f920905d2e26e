"""`hybrid-moe sim`: replay a routing trace through the decision engine for each policy x budget."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("sim", help="simulate cache policies and budgets on a routing trace")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="trace file (.csv route_trace v1 or .npz)")
    src.add_argument("--synthetic", metavar="PRESET", help="synthetic trace of a model preset")
    p.add_argument("--tokens", type=int, default=10_000, help="decode tokens of a synthetic trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="consumer-4090", help="profile name or JSON path")
    p.add_argument(
        "--budget",
        default="10%,25%,50%",
        help="comma list: percentages of all experts, slots, or bytes (2GiB)",
    )
    p.add_argument("--policy", default="all", help="'all' or a comma list of policies")
    p.add_argument("--format", dest="fmt", default="bf16", choices=["bf16", "q8_0"])
    p.add_argument("--model", help="model preset for the expert shape (default: from the trace)")
    p.add_argument(
        "--predictor-accuracy",
        type=float,
        default=None,
        help="next-layer prediction accuracy for prefetch (default 0.8)",
    )
    p.add_argument(
        "--static-profile",
        metavar="HEAT_JSON",
        help="place `static` by this co-activation profile's per-layer heat (other prompts, e.g. "
        "../shared/traces/qwen3-30b-a3b.coactivation.json) instead of the trace's own counts, "
        "which know the future and flatter static",
    )
    p.add_argument(
        "--value-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a value-policy tunable (repeatable), e.g. stall_weight=1",
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="with --static-profile: lru, lfu, lru-fetch and value start from static's placement "
        "(as `hybrid-moe bench decode` runs them) instead of an empty cache",
    )
    p.add_argument("--out", help="write all results as JSON")
    p.add_argument("--plot", help="write a plot of tokens/s against budget per policy (PNG)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from hybrid_moe.policies import parse_policies, parse_value_params
    from hybrid_moe.sim import DEFAULT_PREDICTOR_ACCURACY, profile_from_heat, simulate

    policies = parse_policies(args.policy)
    budgets = [b.strip() for b in args.budget.split(",") if b.strip()]
    if not budgets:
        raise ValueError("--budget needs at least one value, e.g. 10%,25%")
    if args.trace:
        from hybrid_moe.traces import load_trace

        trace, source = load_trace(args.trace), args.trace
    else:
        from hybrid_moe.traces import synthetic_trace

        if args.tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
        trace = synthetic_trace(args.synthetic, args.tokens, seed=args.seed)
        source = f"synthetic:{args.synthetic}:{args.tokens}"
    acc = DEFAULT_PREDICTOR_ACCURACY if args.predictor_accuracy is None else args.predictor_accuracy
    if args.warm_start and not args.static_profile:
        raise ValueError("--warm-start needs --static-profile (the placement to start from)")
    static = profile_from_heat(args.static_profile) if args.static_profile else None
    placement = (
        f"static placed by {args.static_profile}"
        + ("; caching policies start from it" if args.warm_start else "")
        if static is not None
        else "static placed by this trace's own counts (it knows the future: optimistic); "
        "caching policies start empty"
    )
    place = {"static_profile": static, "warm_start": args.warm_start}
    vp = parse_value_params(args.value_param)
    if vp:
        placement += "; value with " + ", ".join(f"{k}={v}" for k, v in vp.items())
    model = args.model or (args.synthetic if args.synthetic else None)
    # "cpu" ignores the budget: run it once and use it as the baseline of every budget.
    results = []
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating", total=len(budgets) * len(policies))
        base = simulate(
            trace, args.profile, "cpu", 0, args.fmt, acc, args.seed, model=model, **place
        )
        for b in budgets:
            for pol in policies:
                r = (
                    base
                    if pol == "cpu"
                    else simulate(
                        trace,
                        args.profile,
                        pol,
                        b,
                        args.fmt,
                        acc,
                        args.seed,
                        model=model,
                        value_params=vp if pol == "value" else None,
                        **place,
                    )
                )
                r = dict(r, budget=b, speedup_vs_cpu=r["tokens_per_s"] / base["tokens_per_s"])
                results.append(r)
                progress.advance(task)

    table = Table(
        title=f"{source} | {args.profile} | {args.fmt} | {trace.decode_steps().size} decode steps",
        caption=placement,
    )
    for col in (
        "policy",
        "budget",
        "slots",
        "tokens/s",
        "vs cpu",
        "hit rate",
        "p99 ms",
        "copy MB/tok",
    ):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for r in results:
        table.add_row(
            r["policy"],
            r["budget"],
            str(r["budget_slots"] if r["policy"] != "cpu" else 0),
            f"{r['tokens_per_s']:.2f}",
            f"{r['speedup_vs_cpu']:.2f}x",
            f"{r['hit_rate']:.1%}",
            f"{r['latency_p99_us'] / 1e3:.1f}",
            f"{r['copy_bytes_per_token'] / 1e6:.1f}",
        )
    Console().print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "source": source,
                    "profile": args.profile,
                    "format": args.fmt,
                    "placement": placement,
                    "results": [
                        {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}
                        for r in results
                    ],
                },
                f,
                indent=1,
            )
    if args.plot:
        plot(results, budgets, policies, args.plot, title=f"{source} ({args.profile}, {args.fmt})")
    return 0


def plot(results, budgets, policies, path, title="") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install 'hybrid_moe[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pol in policies:
        rs = [r for r in results if r["policy"] == pol]
        xs = [100 * r["budget_fraction"] if pol != "cpu" else 100 * i for i, r in enumerate(rs)]
        if pol == "cpu":
            ax.axhline(rs[0]["tokens_per_s"], color="gray", ls="--", label="cpu")
            continue
        ax.plot(xs, [r["tokens_per_s"] for r in rs], marker="o", label=pol)
    ax.set_xlabel("cache budget (% of all experts)")
    ax.set_ylabel("decode tokens/s (simulated)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
