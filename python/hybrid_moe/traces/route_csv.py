"""Reader and writer of the `route_trace v1` CSV format (see ../shared/traces/README.md).

    # route_trace v1
    # model=M arch=A n_layer=L n_expert=E n_expert_used=K
    # layer=l expert_bytes=B dense_bytes=D          (optional, one per layer)
    turn,phase,step,layer,slot,expert,weight,residency,expert_bytes
    0,0,0,0,0,49,0.221297,0,3059712                  (one row per (step, layer, slot))

One token per CSV step. Steps are ordered by (turn, step). `residency` (the source engine's own
cache flag) and the per-row `expert_bytes` are read for validity and otherwise ignored.

Missing rows: every (step, layer) must have all k slots, and every decode step all layers. A
prefill step may lack whole layers: llama.cpp computes the last layer of a prefill batch only for
the output token, so the dev trace has no layer-47 rows for 27 of its 28 prefill tokens. Those
(token, layer) entries are kept with `computed=False` (ids 0..k-1, weight 0) unless strict=True.

Our writer adds one comment line when a step holds several tokens (prefill chunks), which other
readers ignore:  `# hybrid_moe step_tokens=512,1,1,...`  (tokens per step, in step order);
each token is then its own CSV step and our reader regroups them.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from hybrid_moe.trace_model import DECODE, PREFILL, RouteTrace

MAGIC = "# route_trace v1"
COLUMNS = [
    "turn",
    "phase",
    "step",
    "layer",
    "slot",
    "expert",
    "weight",
    "residency",
    "expert_bytes",
]
_KV = re.compile(r"(\w+)=(\S*)")


def _err(line: int, msg: str) -> ValueError:
    return ValueError(f"line {line}: {msg}")


def _header_int(kv: dict, key: str, line: int) -> int:
    if key not in kv:
        raise _err(
            line,
            f"bad header: missing {key}= (expected 'model=… n_layer= n_expert= n_expert_used=')",
        )
    try:
        v = int(kv[key])
    except ValueError:
        raise _err(line, f"bad header: {key}={kv[key]!r} is not an integer") from None
    if v < 1:
        raise _err(line, f"bad header: {key} must be >= 1, got {v}")
    return v


def _parse_rows(lines: list[str], first_line: int) -> np.ndarray:
    """Data lines -> float64 [R, 9]; errors name the file line (first_line = line of lines[0])."""
    try:
        if not lines:
            return np.zeros((0, len(COLUMNS)))
        arr = np.loadtxt(io.StringIO("".join(lines)), delimiter=",", dtype=np.float64, ndmin=2)
        if arr.shape[1] == len(COLUMNS):
            return arr
    except ValueError:
        pass
    # Slow path only to find and name the bad line.
    for i, raw in enumerate(lines):
        fields = raw.rstrip("\r\n").split(",")
        if len(fields) != len(COLUMNS):
            raise _err(
                first_line + i, f"wrong column count: expected {len(COLUMNS)}, got {len(fields)}"
            )
        for name, f in zip(COLUMNS, fields, strict=True):
            try:
                float(f) if name == "weight" else int(f)
            except ValueError:
                raise _err(first_line + i, f"non-numeric field {name}={f!r}") from None
    raise ValueError("route_trace CSV could not be parsed")  # pragma: no cover


def read_route_csv(path: str | Path, strict: bool = False) -> RouteTrace:
    text = Path(path).read_text()
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != MAGIC:
        got = lines[0].strip() if lines else "an empty file"
        raise _err(1, f"bad header: expected {MAGIC!r}, got {got!r}")
    meta: dict = {}
    meta_line = None
    layer_bytes: dict[int, int] = {}
    step_tokens = None
    i = 1
    while i < len(lines) and lines[i].startswith("#"):
        kv = dict(_KV.findall(lines[i]))
        if "n_layer" in kv or "n_expert" in kv or "model" in kv:
            meta, meta_line = kv, i + 1
        elif "layer" in kv and "expert_bytes" in kv:
            try:
                layer_bytes[int(kv["layer"])] = int(kv["expert_bytes"])
            except ValueError:
                raise _err(i + 1, "bad header: layer= and expert_bytes= must be integers") from None
        elif "step_tokens" in kv:
            try:
                step_tokens = np.array([int(x) for x in kv["step_tokens"].split(",")], np.int64)
            except ValueError:
                raise _err(i + 1, "bad header: step_tokens= must be integers") from None
        i += 1
    if meta_line is None:
        raise _err(
            i + 1,
            "bad header: missing the '# model=… n_layer= n_expert= n_expert_used=' "
            "line before the column header",
        )
    n_layer = _header_int(meta, "n_layer", meta_line)
    n_expert = _header_int(meta, "n_expert", meta_line)
    k = _header_int(meta, "n_expert_used", meta_line)
    if i >= len(lines) or lines[i].strip().split(",") != COLUMNS:
        got = lines[i].strip() if i < len(lines) else "end of file"
        raise _err(i + 1, f"bad header: expected columns {','.join(COLUMNS)!r}, got {got!r}")
    body = lines[i + 1 :]
    while body and not body[-1].strip():
        body.pop()  # trailing blank lines
    first = i + 2  # file line of body[0]
    rows = _parse_rows(body, first)
    line_of = np.arange(rows.shape[0]) + first

    ints = rows[:, [0, 1, 2, 3, 4, 5, 7, 8]]
    bad = np.flatnonzero(np.any(ints != np.round(ints), axis=1))
    if bad.size:
        raise _err(int(line_of[bad[0]]), "non-numeric field: an integer column holds a fraction")
    turn, phase, step, layer, slot, expert = (rows[:, c].astype(np.int64) for c in range(6))
    weight = rows[:, 6].astype(np.float32)

    def check(cond: np.ndarray, msg) -> None:
        bad = np.flatnonzero(~cond)
        if bad.size:
            raise _err(int(line_of[bad[0]]), msg(bad[0]))

    check(np.isin(phase, (PREFILL, DECODE)), lambda r: f"phase {phase[r]} must be 0 or 1")
    check(
        (layer >= 0) & (layer < n_layer), lambda r: f"layer {layer[r]} out of range [0, {n_layer})"
    )
    check(
        (slot >= 0) & (slot < k),
        lambda r: (
            f"slot {slot[r]} out of range [0, {k}): inconsistent k (header n_expert_used={k})"
        ),
    )
    check(
        (expert >= 0) & (expert < n_expert),
        lambda r: f"expert id {expert[r]} out of range [0, {n_expert})",
    )
    check(np.isfinite(weight), lambda r: f"weight {weight[r]} is not finite")
    check((turn >= 0) & (step >= 0), lambda r: "turn and step must be >= 0")

    # Steps in (turn, step) order; rows -> (step index, layer, slot).
    key = turn * (int(step.max(initial=0)) + 1) + step
    uniq, first_row, s_idx = np.unique(key, return_index=True, return_inverse=True)
    n_steps = uniq.shape[0]
    step_phase = phase[first_row]
    check(
        phase == step_phase[s_idx],
        lambda r: (
            f"phase {phase[r]} differs from the phase {step_phase[s_idx[r]]} of the "
            f"other rows of step {step[r]}"
        ),
    )
    cell = (s_idx * n_layer + layer) * k + slot
    order = np.argsort(cell, kind="stable")
    dup = np.flatnonzero(np.diff(cell[order]) == 0)
    if dup.size:
        r = order[dup[0] + 1]
        raise _err(
            int(line_of[r]), f"duplicate row for step {step[r]} layer {layer[r]} slot {slot[r]}"
        )
    present = np.zeros(n_steps * n_layer * k, dtype=bool)
    present[cell] = True
    present = present.reshape(n_steps, n_layer, k)
    n_slots = present.sum(axis=2)  # [S, L]
    partial = np.argwhere((n_slots > 0) & (n_slots < k))
    if partial.size:
        s, lay = (int(x) for x in partial[0])
        rows_here = np.flatnonzero((s_idx == s) & (layer == lay))
        raise _err(
            int(line_of[rows_here[-1]]),
            f"missing slot rows: step {step[first_row[s]]} layer {lay} has "
            f"{int(n_slots[s, lay])} of k={k} slots (inconsistent k)",
        )
    absent = n_slots == 0
    for s in np.flatnonzero(absent.any(axis=1)):
        if strict or step_phase[s] == DECODE or absent[s].all():
            miss = np.flatnonzero(absent[s])
            raise _err(
                int(line_of[first_row[s]]),
                f"missing layer rows: {'decode' if step_phase[s] else 'prefill'} step "
                f"{step[first_row[s]]} has no rows for layers "
                f"{miss[:8].tolist()}{' …' if miss.size > 8 else ''} (n_layer={n_layer})",
            )

    ids = np.tile(np.arange(k, dtype=np.int32), (n_steps, n_layer, 1))
    weights = np.zeros((n_steps, n_layer, k), dtype=np.float32)
    ids.reshape(-1)[cell] = expert
    weights.reshape(-1)[cell] = weight
    step_offsets = np.arange(n_steps + 1, dtype=np.int64)
    phases = step_phase.astype(np.int8)
    if step_tokens is not None:
        if step_tokens.sum() != n_steps or np.any(step_tokens < 1):
            raise _err(
                meta_line,
                f"bad header: step_tokens sums to {int(step_tokens.sum())}, "
                f"but the file has {n_steps} CSV steps",
            )
        step_offsets = np.concatenate([[0], np.cumsum(step_tokens)]).astype(np.int64)
        phases = phases[step_offsets[:-1]]
    eb = np.array([layer_bytes.get(lay, 0) for lay in range(n_layer)], dtype=np.int64)
    model = meta.get("model", "")
    return RouteTrace(
        n_layer=n_layer,
        n_expert=n_expert,
        top_k=k,
        ids=ids,
        weights=weights,
        step_offsets=step_offsets,
        phase=phases,
        model=model,
        expert_bytes=eb,
        computed=~absent,
    )


def write_route_csv(trace: RouteTrace, path: str | Path) -> None:
    """Write `trace` as route_trace v1 (one CSV step per token; uncomputed rows are omitted)."""
    n, L, k = trace.ids.shape
    tok_phase = np.repeat(trace.phase, np.diff(trace.step_offsets))
    out = io.StringIO()
    out.write(f"{MAGIC}\n")
    model = trace.model.replace(" ", "_") or "unknown"
    out.write(
        f"# model={model} arch=unknown n_layer={L} n_expert={trace.n_expert} n_expert_used={k}\n"
    )
    for lay in range(L):
        out.write(f"# layer={lay} expert_bytes={int(trace.expert_bytes[lay])} dense_bytes=0\n")
    tokens_per_step = np.diff(trace.step_offsets)
    if np.any(tokens_per_step > 1):
        out.write("# hybrid_moe step_tokens=" + ",".join(map(str, tokens_per_step.tolist())) + "\n")
    out.write(",".join(COLUMNS) + "\n")
    t, lay, j = np.meshgrid(np.arange(n), np.arange(L), np.arange(k), indexing="ij")
    keep = np.broadcast_to(trace.computed[:, :, None], (n, L, k)).reshape(-1)
    cols = [
        np.zeros(n * L * k, dtype=np.int64),
        tok_phase[t.reshape(-1)].astype(np.int64),
        t.reshape(-1),
        lay.reshape(-1),
        j.reshape(-1),
        trace.ids.reshape(-1).astype(np.int64),
    ]
    cols = [c[keep] for c in cols]
    w = trace.weights.reshape(-1)[keep]
    eb = trace.expert_bytes[lay.reshape(-1)[keep]]
    # %.9g round-trips float32 exactly.
    head = np.char.add(
        np.char.add(np.char.mod("%d,", cols[0]), np.char.mod("%d,", cols[1])),
        np.char.add(np.char.mod("%d,", cols[2]), np.char.mod("%d,", cols[3])),
    )
    tail = np.char.add(np.char.mod("%d,", cols[4]), np.char.mod("%d,", cols[5]))
    wcol = np.array([f"{x:.9g}" for x in w.tolist()]) if w.size else np.zeros(0, dtype=str)
    rows = np.char.add(np.char.add(head, tail), np.char.add(wcol, np.char.mod(",0,%d", eb)))
    if rows.size:
        out.write("\n".join(rows.tolist()) + "\n")
    Path(path).write_text(out.getvalue())
