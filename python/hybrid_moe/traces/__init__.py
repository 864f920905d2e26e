"""Routing traces: read/write (route_trace v1 CSV, native .npz), statistics, synthetic traces.

load_trace(path) / save_trace(trace, path)   format chosen by extension (.csv or .npz)
synthetic_trace(preset, decode_tokens, seed, prefill_tokens, prefill_chunk)
reuse_at_next(trace), top_share(trace, top, window), hit_rate_curves(trace, sizes, policies)
"""

from __future__ import annotations

from pathlib import Path

from hybrid_moe.trace_model import RouteTrace
from hybrid_moe.traces.native_npz import read_npz, write_npz
from hybrid_moe.traces.route_csv import read_route_csv, write_route_csv
from hybrid_moe.traces.stats import hit_rate_curves, reuse_at_next, top_share
from hybrid_moe.traces.synthetic import synthetic_trace

_EXTENSIONS = (".csv", ".npz")


def _kind(path: str | Path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"trace file {str(path)!r}: unknown extension {ext!r}, expected .csv "
            f"(route_trace v1) or .npz (native)"
        )
    return ext


def load_trace(path: str | Path, strict: bool = False) -> RouteTrace:
    """Read a trace; .csv = route_trace v1 (strict: no missing prefill layer rows either),
    .npz = native. Malformed files raise ValueError ("line N: ..." for CSV)."""
    if _kind(path) == ".csv":
        return read_route_csv(path, strict=strict)
    return read_npz(path)


def save_trace(trace: RouteTrace, path: str | Path) -> None:
    """Write a trace in the format its extension names (.csv or .npz)."""
    if _kind(path) == ".csv":
        write_route_csv(trace, path)
    else:
        write_npz(trace, path)


__all__ = [
    "RouteTrace",
    "hit_rate_curves",
    "load_trace",
    "reuse_at_next",
    "save_trace",
    "synthetic_trace",
    "top_share",
]
