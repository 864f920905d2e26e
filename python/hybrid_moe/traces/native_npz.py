"""The native trace format: one .npz (numpy zip) holding RouteTrace's arrays as they are.

Keys: format ("hybrid_moe.route_trace"), version (1), n_layer, n_expert, top_k, model, ids
(uint8 when n_expert <= 256, else int32), weights float32, step_offsets int64, phase int8,
expert_bytes int64, computed bool. Compressed; lossless (weights stay float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybrid_moe.trace_model import RouteTrace

FORMAT = "hybrid_moe.route_trace"
VERSION = 1
_KEYS = (
    "format",
    "version",
    "n_layer",
    "n_expert",
    "top_k",
    "model",
    "ids",
    "weights",
    "step_offsets",
    "phase",
    "expert_bytes",
    "computed",
)


def write_npz(trace: RouteTrace, path: str | Path) -> None:
    ids = trace.ids.astype(np.uint8) if trace.n_expert <= 256 else trace.ids
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
        np.savez_compressed(
            f,
            format=FORMAT,
            version=VERSION,
            n_layer=trace.n_layer,
            n_expert=trace.n_expert,
            top_k=trace.top_k,
            model=trace.model,
            ids=ids,
            weights=trace.weights,
            step_offsets=trace.step_offsets,
            phase=trace.phase,
            expert_bytes=trace.expert_bytes,
            computed=trace.computed,
        )


def read_npz(path: str | Path) -> RouteTrace:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    with z:
        missing = [k for k in _KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path}: not a hybrid_moe trace: missing keys {missing}")
        if str(z["format"]) != FORMAT or int(z["version"]) != VERSION:
            raise ValueError(
                f"{path}: format {z['format']!s} version {int(z['version'])}, "
                f"expected {FORMAT} version {VERSION}"
            )
        return RouteTrace(
            n_layer=int(z["n_layer"]),
            n_expert=int(z["n_expert"]),
            top_k=int(z["top_k"]),
            ids=z["ids"].astype(np.int32),
            weights=z["weights"],
            step_offsets=z["step_offsets"],
            phase=z["phase"],
            model=str(z["model"]),
            expert_bytes=z["expert_bytes"],
            computed=z["computed"],
        )
