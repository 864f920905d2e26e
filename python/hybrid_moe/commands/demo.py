"""`hybrid-moe demo`: the main job on an embedded default, no model download, no GPU required.

Until the runtime lands (issue 6) the demo runs what exists: it builds a Qwen3-30B-A3B-shaped expert
stack with random bf16 weights, sized to this machine, routes tokens with a random router, and
measures one decode step per layer with the plain torch expert MLP, the baseline every later
kernel is compared with. It says what it did and what it measured.
"""

from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on an embedded Qwen3-30B-A3B-shaped default")
    p.add_argument("--layers", type=int, default=0, help="MoE layers (0: sized to this machine)")
    p.add_argument("--tokens", type=int, default=16, help="decode steps to run")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from hybrid_moe.system import default_threads, info

    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
    if args.layers < 0:
        raise ValueError(f"--layers must be >= 0, got {args.layers}")
    console = Console()
    machine = info()
    hidden, inter, n_expert, top_k = 2048, 768, 128, 8  # Qwen3-30B-A3B
    expert_bytes = 3 * hidden * inter * 2
    # 48 layers need 58 GB of bf16 experts; on a small machine use fewer and say so.
    layers = args.layers or max(1, min(48, int(2.0e9 // (n_expert * expert_bytes))))
    console.print(
        f"[bold]hybrid-moe {machine['version']} demo[/]: Qwen3-30B-A3B expert shape "
        f"(hidden {hidden}, intermediate {inter}, {n_expert} experts, top-{top_k}), "
        f"{layers} of 48 layers ({layers * n_expert * expert_bytes / 1e9:.1f} GB bf16) "
        f"{'(fewer layers to fit this machine)' if layers < 48 else ''}"
    )
    console.print(
        f"CPU ISA {machine['cpu_isa']} ({machine['cpu_isa_reason']}); CUDA available: "
        f"{machine['cuda_available']}; threads {default_threads()}"
    )
    torch.manual_seed(args.seed)
    torch.set_num_threads(default_threads())
    gate_up = [
        torch.randn(n_expert, 2 * inter, hidden, dtype=torch.bfloat16) * 0.02 for _ in range(layers)
    ]
    down = [
        torch.randn(n_expert, hidden, inter, dtype=torch.bfloat16) * 0.02 for _ in range(layers)
    ]
    router = [torch.randn(hidden, n_expert) for _ in range(layers)]

    step_times = []
    x = torch.randn(1, hidden)
    for _ in track(range(args.tokens), description="decode (torch bf16 on CPU)", console=console):
        t0 = time.perf_counter()
        for layer in range(layers):
            probs = torch.softmax(x @ router[layer], dim=-1)
            w, ids = probs.topk(top_k, dim=-1)
            w = w / w.sum(dim=-1, keepdim=True)
            xb = x.to(torch.bfloat16)
            out = torch.zeros(1, hidden)
            for j in range(top_k):
                e = int(ids[0, j])
                gu = (xb @ gate_up[layer][e].T).float()
                h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
                out += w[0, j] * (h.to(torch.bfloat16) @ down[layer][e].T).float()
            x = torch.nn.functional.rms_norm(x + out, (hidden,))
        step_times.append(time.perf_counter() - t0)

    step_times.sort()
    median = step_times[len(step_times) // 2]
    bytes_per_token = layers * top_k * expert_bytes
    table = Table(title="decode, all experts on the CPU (torch bf16: the baseline)")
    for col in ("layers", "median ms/token", "tokens/s", "expert GB/s", "48-layer tokens/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(layers),
        f"{median * 1e3:.1f}",
        f"{1 / median:.1f}",
        f"{bytes_per_token / median / 1e9:.1f}",
        f"{layers / 48 / median:.2f}",
    )
    console.print(table)
    console.print(
        f"Ran {args.tokens} decode tokens through {layers} MoE layers with random routing; each "
        f"token read {bytes_per_token / 1e6:.0f} MB of expert weights. The hybrid runtime "
        "(GPU expert cache + scheduler) will be compared with this baseline."
    )
    return 0
