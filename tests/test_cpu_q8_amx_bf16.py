"""Q8_0 weights on the AMX variant's bf16 tiles (HYBRID_MOE_Q8_AMX, csrc/cpu/kernel_ops.h).

The setting is read once per process, so each mode runs in a child process that saves its
outputs. Tolerance (max |out - ref| <= tol * max |ref|, the reference on the store's own
dequantised weights): 2e-2, the bf16 format's (weights d x q and activations rounded to bf16,
2^-9 relative each; fp32 sums). GGUF rows and q8_rows16 groups must agree to 1e-5 relative: the
same bf16 operands, only the order of the float additions may differ.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from hybrid_moe.cpu_experts import available_isas

_CHILD = """
import sys, torch
from hybrid_moe.cpu_experts import CpuExpertStore, reference_layer, run_layer
g = torch.Generator().manual_seed(21)
mk = lambda *s: torch.randn(*s, generator=g) * 0.05
outs = {}
for H, I in ((160, 96), (2048, 64)):
    E = 2
    store = CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I), fmt="q8_0")
    ref_w = store.dequantized()
    # every token to both experts: groups of T tokens (tiles from 8; auto's bf16 from 64);
    # 9 and 70 end in a partial token tile, 32 and 96 fill whole pairs of tiles
    for T in (9, 32, 70, 96):
        x = torch.randn(T, H, generator=g)
        ids = torch.tensor([[0, 1]] * T)
        w = torch.rand(T, 2, generator=g) + 0.1
        ref = reference_layer(*ref_w, x, ids, w)
        for packing in ("gguf", "q8_rows16"):
            s = store if packing == "gguf" else store.with_packing("q8_rows16")
            outs[(H, T, packing)] = run_layer(s, x, ids, w, threads=2, isa="amx")
        outs[(H, T, "ref")] = ref
torch.save(outs, sys.argv[1])
"""


def _run_mode(mode, path):
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        env={**os.environ, "HYBRID_MOE_Q8_AMX": mode},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(path)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    if "amx" not in available_isas():
        pytest.skip("needs the AMX variant (the lent GPU machine's Xeon runs it)")
    d = tmp_path_factory.mktemp("q8amx")
    return {m: _run_mode(m, d / f"{m}.pt") for m in ("int8", "bf16", "auto")}


def test_bf16_tiles_match_the_float32_reference(outputs):
    for (H, T, packing), out in outputs["bf16"].items():
        if packing == "ref":
            continue
        ref = outputs["bf16"][(H, T, "ref")]
        scale = ref.abs().max().item()
        assert scale > 0.1
        err = (out - ref).abs().max().item()
        assert err <= 2e-2 * scale, (H, T, packing, err, scale)


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_gguf_rows_equal_groups(outputs, mode):
    for (H, T, packing), out in outputs[mode].items():
        if packing != "gguf":
            continue
        groups = outputs[mode][(H, T, "q8_rows16")]
        assert (out - groups).abs().max().item() <= 1e-5 * out.abs().max().item(), (mode, H, T)


def test_modes_compute_differently_and_auto_picks_by_group_size(outputs):
    """bf16 and int8 tiles give different bits (the setting takes effect); auto equals int8 below
    64 tokens per group and bf16 from 64."""
    for key, out in outputs["auto"].items():
        if key[2] == "ref":
            continue
        assert not torch.equal(outputs["int8"][key], outputs["bf16"][key]), key
        want = "bf16" if key[1] >= 64 else "int8"
        assert torch.equal(out, outputs[want][key]), (key, want)
