"""`hybrid-moe info`: what was built and what this machine offers."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="version, CUDA and GPU, CPU ISA chosen and why, threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from hybrid_moe.system import info

    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hybrid-moe {data['version']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("CUDA built", f"{data['cuda_built']} (runtime {data['cuda_runtime_version']})")
    if data["cuda_available"]:
        table.add_row("CUDA available", f"True (driver {data['cuda_driver_version']})")
        for g in data["gpus"]:
            major, minor = g["capability"]
            table.add_row(
                f"GPU {g['index']}",
                f"{g['name']}, {g['total_memory'] / 2**30:.1f} GiB "
                f"({g['free_memory'] / 2**30:.1f} free), sm_{major}{minor}, "
                f"{g['multiprocessors']} SMs",
            )
    else:
        table.add_row("CUDA available", f"False ({data['cuda_unavailable_reason']})")
    table.add_row("CPU", data["cpu_brand"] or data["cpu_vendor"] or "unknown")
    flags = [k for k, v in data["cpu_features"].items() if v]
    table.add_row("CPU features", " ".join(flags) or "none of interest")
    table.add_row("CPU variants built", ", ".join(data["cpu_variants_built"]))
    table.add_row("CPU ISA chosen", f"{data['cpu_isa']}: {data['cpu_isa_reason']}")
    table.add_row("Q8_0 host rows", data["q8_0_host_packing"])
    table.add_row(
        "threads",
        f"{data['threads']} (physical cores {data['physical_cores']}, "
        f"logical CPUs {data['logical_cpus']})",
    )
    Console().print(table)
    return 0
