"""The CPU layer's dataflow phase 2 (HYBRID_MOE_DATAFLOW, cpu/moe_cpu.h) and the pool trace.

Dataflow changes which core computes what and when, never the arithmetic: its outputs must equal
the barrier mode's bit for bit (same per-row sums, partials added to out in the same group order),
on every ISA, and stay within the float32 reference's tolerance (test_cpu_experts.py's). The
trace (cpu/pool_trace.h) must show each down item starting after its own expert's gate/up items.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from child_python import run_python
from hybrid_moe._native import native
from hybrid_moe.cpu_experts import CpuExpertStore, available_isas, run_layer

ISAS = available_isas()

# Each setting is read once per process: a child computes every case and saves the outputs.
_CHILD = """
import sys, torch
from hybrid_moe.cpu_experts import CpuExpertStore, available_isas, reference_layer, run_layer
g = torch.Generator().manual_seed(5)
outs = {}
cases = [("bf16", 200, 72), ("q8_0", 160, 96), ("q8_0r16", 160, 96), ("bf16", 256, 128)]
for fmt, H, I in cases:
    mk = lambda *s: torch.randn(*s, generator=g) * 0.05
    store = CpuExpertStore.from_tensors(mk(12, I, H), mk(12, I, H), mk(12, H, I),
                                        fmt=fmt.replace("r16", ""))
    if fmt == "q8_0r16":
        store = store.with_packing("q8_rows16")
    # T=40 over 3 of the 12 experts: groups of >= 8 tokens (AMX tiles), forced into dataflow by 1
    for T, k, E_used in ((1, 8, 12), (3, 4, 12), (5, 2, 12), (40, 2, 3)):
        x = torch.randn(T, H, generator=g)
        ids = torch.stack([torch.randperm(E_used, generator=g)[:k] for _ in range(T)])
        w = torch.rand(T, k, generator=g) + 0.1
        ref = reference_layer(*store.dequantized(), x, ids, w)
        for isa in available_isas():
            out = run_layer(store, x, ids, w, threads=3, isa=isa)
            outs[(fmt, H, T, isa)] = out
            outs[(fmt, H, T, "ref")] = ref
torch.save(outs, sys.argv[1])
"""


def _outputs(setting: str, path) -> dict:
    r = run_python(_CHILD, str(path), env={"HYBRID_MOE_DATAFLOW": setting}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(path)


def test_dataflow_gives_the_barrier_modes_bits(tmp_path):
    off = _outputs("0", tmp_path / "off.pt")
    on = _outputs("1", tmp_path / "on.pt")
    auto = _outputs("auto", tmp_path / "auto.pt")
    assert off.keys() == on.keys() == auto.keys()
    for key, ref in off.items():
        assert torch.equal(on[key], ref), key
        assert torch.equal(auto[key], ref), key
    # And both are right: within test_cpu_experts.py's loosest tolerance (3e-2 relative).
    for (fmt, H, T, isa), out in on.items():
        if isa == "ref":
            continue
        ref = on[(fmt, H, T, "ref")]
        assert (out - ref).abs().max() <= 3e-2 * ref.abs().max(), (fmt, H, T, isa)


def _traced_call(store, x, ids, w, isa):
    native.cpu_pool_tracing(True)
    try:
        out = run_layer(store, x, ids, w, threads=3, isa=isa)
    finally:
        native.cpu_pool_tracing(False)
    return out, native.cpu_last_pool_trace()


@pytest.mark.skipif(os.environ.get("HYBRID_MOE_DATAFLOW", "auto") != "auto", reason="auto only")
@pytest.mark.parametrize("isa", ISAS)
def test_trace_shows_down_items_waiting_for_their_own_expert(isa):
    H, I, E, k = 256, 96, 8, 4
    g = torch.Generator().manual_seed(3)
    mk = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    store = CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I), fmt="q8_0")
    ids = torch.tensor([[6, 1, 3, 4]])
    _, t = _traced_call(store, torch.randn(1, H), ids, torch.rand(1, k) + 0.1, isa)
    items = t["items"]
    # Phase 0 packs the token once; phase 1: 4 groups x I/32 row items; phase 2 (dataflow, auto
    # for >= 2 decode-sized groups): 4 groups x H/64 row blocks.
    blocks1, blocks2 = I // 32, H // 64
    assert t["phase_items"] == [1, k * blocks1, k * blocks2]
    assert items.shape == (1 + k * blocks1 + k * blocks2, 6)
    assert (items[:, 3] >= t["submit_ns"]).all() and (items[:, 5] <= t["finish_ns"]).all()
    assert (items[:, 4] >= items[:, 3]).all() and (items[:, 5] >= items[:, 4]).all()
    assert ((items[:, 0] >= -1) & (items[:, 0] < t["workers"])).all()
    p1, p2 = items[items[:, 1] == 1], items[items[:, 1] == 2]
    for gi in range(k):
        gate_up_end = p1[p1[:, 2] // blocks1 == gi, 5].max()
        assert (p2[p2[:, 2] // blocks2 == gi, 4] >= gate_up_end).all(), gi


def test_trace_is_off_by_default():
    store = CpuExpertStore.from_tensors(
        *(torch.randn(2, 32, 64) for _ in range(2)), torch.randn(2, 64, 32), fmt="bf16"
    )
    x, ids, w = torch.randn(1, 64), torch.tensor([[0, 1]]), torch.ones(1, 2)
    _, first = _traced_call(store, x, ids, w, ISAS[0])
    run_layer(store, x, ids, w, threads=3)  # untraced: the record stays the traced call's
    again = native.cpu_last_pool_trace()
    assert again["submit_ns"] == first["submit_ns"]
    assert np.array_equal(again["items"], first["items"])
