"""`hybrid-moe trace info|convert|synth`: inspect, convert and generate routing traces."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("trace", help="routing traces: info, convert (csv <-> npz), synth")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)

    info = tsub.add_parser("info", help="shape, reuse, popularity and cache hit-rate curves")
    info.add_argument("file", help="trace file: .csv (route_trace v1) or .npz (native)")
    info.add_argument(
        "--sizes",
        default="8,16,32,64",
        help="per-layer cache sizes in experts, comma-separated (default 8,16,32,64)",
    )
    info.add_argument(
        "--window",
        type=int,
        default=64,
        help="decode tokens per short window for the top-16 share (default 64)",
    )
    info.add_argument("--top", type=int, default=16, help="experts counted as 'top' (default 16)")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(func=run_info)

    conv = tsub.add_parser("convert", help="convert between .csv and .npz (by extension)")
    conv.add_argument("input")
    conv.add_argument("output")
    conv.set_defaults(func=run_convert)

    syn = tsub.add_parser("synth", help="write a synthetic trace of a model preset")
    syn.add_argument("preset", help="model preset name (see hybrid_moe.presets.PRESETS)")
    syn.add_argument("output", help=".npz or .csv")
    syn.add_argument("--decode", type=int, default=4096, help="decode tokens (default 4096)")
    syn.add_argument("--prefill", type=int, default=0, help="prefill tokens (default 0)")
    syn.add_argument("--prefill-chunk", type=int, default=512, help="tokens per prefill step")
    syn.add_argument("--seed", type=int, default=0)
    syn.set_defaults(func=run_synth)


def trace_summary(trace, sizes, window: int, top: int) -> dict:
    """Everything `trace info` prints, as plain Python values."""
    import numpy as np

    from hybrid_moe.trace_model import DECODE
    from hybrid_moe.traces import hit_rate_curves, reuse_at_next, top_share

    tokens = np.diff(trace.step_offsets)
    dec = trace.phase == DECODE
    n_dec_tokens = int(tokens[dec].sum())
    policies = ["lru", "belady", "belady_bypass"]
    usable = [s for s in sizes if s >= 1]
    curves = hit_rate_curves(trace, usable, policies=policies)
    reuse = reuse_at_next(trace)
    share_run = top_share(trace, top=top)
    share_win = top_share(trace, top=top, window=min(window, n_dec_tokens))
    return {
        "model": trace.model,
        "layers": trace.n_layer,
        "experts": trace.n_expert,
        "k": trace.top_k,
        "steps": {"prefill": int((~dec).sum()), "decode": int(dec.sum())},
        "tokens": {"prefill": int(tokens[~dec].sum()), "decode": n_dec_tokens},
        "uncomputed_rows": int((~trace.computed).sum()),
        "sizes": usable,
        "window": min(window, n_dec_tokens),
        "top": top,
        "per_layer": {
            "reuse_next": reuse.tolist(),
            "top_share_run": share_run.tolist(),
            "top_share_window": share_win.tolist(),
            **{p: curves[p].tolist() for p in policies},
        },
        "mean": {
            "reuse_next": float(reuse.mean()),
            "top_share_run": float(share_run.mean()),
            "top_share_run_min": float(share_run.min()),
            "top_share_run_max": float(share_run.max()),
            "top_share_window": float(share_win.mean()),
            **{p: curves[p].mean(axis=0).tolist() for p in policies},
        },
    }


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must be positive cache sizes, got {text!r}")
    return sizes


def run_info(args) -> int:
    from hybrid_moe.traces import load_trace

    trace = load_trace(args.file)
    sizes = _parse_sizes(args.sizes)
    if min(sizes) < trace.top_k:
        raise ValueError(
            f"--sizes must be >= k={trace.top_k} (every expert of a step is "
            f"resident under LRU/Belady), got {sizes}"
        )
    s = trace_summary(trace, sizes, args.window, args.top)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    head = Table(title=f"trace {args.file}", show_header=False)
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("model", s["model"] or "?")
    head.add_row("layers / experts / k", f"{s['layers']} / {s['experts']} / {s['k']}")
    head.add_row("steps (prefill / decode)", f"{s['steps']['prefill']} / {s['steps']['decode']}")
    head.add_row("tokens (prefill / decode)", f"{s['tokens']['prefill']} / {s['tokens']['decode']}")
    if s["uncomputed_rows"]:
        head.add_row(
            "uncomputed (token, layer)",
            f"{s['uncomputed_rows']} (source engine skipped "
            f"them, e.g. llama.cpp's last layer in prefill)",
        )
    m = s["mean"]
    head.add_row("reuse at t+1 (decode, mean)", f"{pct(m['reuse_next'])}%")
    head.add_row(
        f"top-{s['top']} share, whole run",
        f"{pct(m['top_share_run'])}% (layers {pct(m['top_share_run_min'])}-"
        f"{pct(m['top_share_run_max'])}%)",
    )
    head.add_row(
        f"top-{s['top']} share, {s['window']}-token windows", f"{pct(m['top_share_window'])}%"
    )
    con.print(head)

    names = {"lru": "LRU", "belady": "Belady", "belady_bypass": "Belady+bypass"}
    mean = Table(title="hit rate % by per-layer cache size (decode; mean over layers)")
    mean.add_column("policy")
    for n in s["sizes"]:
        mean.add_column(f"N={n}", justify="right")
    for p, label in names.items():
        mean.add_row(label, *[pct(x) for x in m[p]])
    con.print(mean)

    per = Table(
        title=f"per layer, decode, %: reuse at t+1, top-{s['top']} share (run, window), "
        f"LRU hit rate at N (L8..), Belady (B8..)"
    )
    for col in ("layer", "reuse", "run", "win"):
        per.add_column(col, justify="right", no_wrap=True)
    for p in ("L", "B"):
        for n in s["sizes"]:
            per.add_column(f"{p}{n}", justify="right", no_wrap=True)
    pl = s["per_layer"]
    for lay in range(s["layers"]):
        per.add_row(
            str(lay),
            pct(pl["reuse_next"][lay]),
            pct(pl["top_share_run"][lay]),
            pct(pl["top_share_window"][lay]),
            *[pct(x) for x in pl["lru"][lay]],
            *[pct(x) for x in pl["belady"][lay]],
        )
    Console(width=max(con.width, 100)).print(per)  # 12 numeric columns need ~100 characters
    con.print(
        "Hits: per (token, layer, slot) selection of decode steps, each layer with its own "
        "cache; LRU/Belady keep every expert of a step resident, Belady+bypass may leave a "
        "missed expert uncached."
    )
    return 0


def run_convert(args) -> int:
    from hybrid_moe.traces import load_trace, save_trace

    trace = load_trace(args.input)
    save_trace(trace, args.output)
    print(
        f"wrote {args.output}: {trace.n_steps} steps, {trace.n_tokens} tokens, "
        f"{trace.n_layer} layers, k={trace.top_k}"
    )
    return 0


def run_synth(args) -> int:
    from hybrid_moe.traces import save_trace, synthetic_trace

    trace = synthetic_trace(
        args.preset,
        args.decode,
        seed=args.seed,
        prefill_tokens=args.prefill,
        prefill_chunk=args.prefill_chunk,
    )
    save_trace(trace, args.output)
    print(
        f"wrote {args.output}: {trace.n_steps} steps ({args.prefill} prefill + {args.decode} "
        f"decode tokens), {trace.n_layer} layers, {trace.n_expert} experts, k={trace.top_k}"
    )
    return 0
