"""Value (and its --value-variant rows) against the best of static / lru / lru-fetch, per source and
budget, from `hybrid-moe bench decode --json` files. Markdown out, for bench/RESULTS.md. Beside
the ratios, issue 6's other targets for the `value` row: value / cpu, measured / simulated and
measured / bandwidth bound (latency ratios, as `bench decode` reports them).

    python3 bench/decode_ratios.py decode_bf16_heat.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BASELINES = ("static", "lru", "lru-fetch")


def ratio_rows(result: dict) -> list[str]:
    rows = result["rows"]
    values = sorted({r["policy"] for r in rows if r["policy"].startswith("value")})
    lines = [
        "| source | fmt | budget | cpu | static | lru | lru-fetch | "
        + " | ".join(values)
        + " | "
        + " | ".join(f"{v} / best" for v in values)
        + " | value / cpu | meas/sim | meas/bound |",
        "|" + "---|" * (10 + 2 * len(values)),
    ]
    keys = sorted({(r["source"], r["format"], r["budget"]) for r in rows})
    for source, fmt, budget in keys:
        same = [r for r in rows if (r["source"], r["format"], r["budget"]) == (source, fmt, budget)]
        g = {r["policy"]: r["tokens_per_s"] for r in same}
        value = next((r for r in same if r["policy"] == "value"), {})
        if not all(b in g for b in BASELINES):
            continue
        best = max(g[b] for b in BASELINES)
        cells = [f"{g.get(p, float('nan')):.1f}" for p in ("cpu", *BASELINES, *values)]
        cells += [f"{g[v] / best:.2f}" for v in values]
        cells.append(f"{g['value'] / g['cpu']:.2f}" if "value" in g and "cpu" in g else "-")
        for key in ("measured_over_sim", "measured_over_bound"):
            x = value.get(key)
            cells.append(f"{x:.2f}" if x is not None else "-")
        lines.append(f"| {Path(source).name} | {fmt} | {budget:.0%} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="bench decode --json output")
    args = ap.parse_args()
    for path in args.json:
        result = json.loads(Path(path).read_text())
        print(f"{path} ({result.get('date', '?')}; {'; '.join(result.get('notes', []))})\n")
        print("\n".join(ratio_rows(result)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
