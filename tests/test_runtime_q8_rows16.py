"""The runtime with Q8_0 host rows in groups of 16 (HYBRID_MOE_Q8_ROWS16=1: the CPU kernels read
the group layout, the mover converts each copy back to GGUF rows on the GPU) and with GGUF rows
(=0): both match the float32 reference (tolerance as tests/test_runtime.py) and each other to
float rounding. The setting is read once per process, hence child processes."""

from __future__ import annotations

import json

import pytest
import torch

from child_python import run_python

_CHILD = """
import json, sys, torch
from hybrid_moe import HybridMoELayer, Runtime
from hybrid_moe.cpu_experts import quantize_q8_0
from hybrid_moe.loaders.tensors import ExpertWeights
from hybrid_moe.reference import ReferenceExperts
E, H, I, K, L = 8, 96, 64, 2, 2
dev = torch.device(sys.argv[1])
g = torch.Generator().manual_seed(0)
ws = [ExpertWeights("q8_0", *(quantize_q8_0(torch.randn(*s, generator=g) * 0.2)
                               for s in ((E, I, H), (E, I, H), (E, H, I)))) for _ in range(L)]
refs = [ReferenceExperts(w).to(dev) for w in ws]
res = {}
for policy, budget in (("cpu", "0%"), ("lru", "30%"), ("value", "100%")):
    rt = Runtime(budget=budget, policy=policy, device=dev, threads=2, n_layers=L)
    layers = [HybridMoELayer(rt, i, ws[i], top_k=K) for i in range(L)]
    outs, errs = [], []
    for T in (1, 3, 1, 1, 17, 1):
        x = torch.randn(T, H, generator=g).to(dev)
        for layer, ref in zip(layers, refs):
            ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(dev)
            w = (torch.rand(T, K, generator=g) + 0.1).to(dev)
            out, want = layer(x, ids, w).float(), ref(x, ids, w).float()
            errs.append(float((out - want).abs().max() / want.abs().max()))
            outs.append(out.cpu().flatten().tolist())
        if dev.type == "cuda":
            rt.wait_copies()
    rt.synchronize()
    s = rt.stats()
    res[policy] = {"errs": errs, "outs": outs, "packing": s["host_packing"],
                   "gpu_pairs": s["gpu_pairs"]}
print(json.dumps(res))
"""


def _run(device: str, setting: str) -> dict:
    r = run_python(_CHILD, device, env={"HYBRID_MOE_Q8_ROWS16": setting}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_q8_rows16_runtime_matches_reference_and_gguf_rows(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    grouped, gguf = _run(device, "1"), _run(device, "0")
    for policy in grouped:
        assert grouped[policy]["packing"] == "q8_rows16" and gguf[policy]["packing"] == "gguf"
        for run in (grouped, gguf):
            assert max(run[policy]["errs"]) <= 3e-2, (policy, max(run[policy]["errs"]))
        if device == "cpu":  # on the GPU machine which side computes an expert depends on timing
            for a, b in zip(grouped[policy]["outs"], gguf[policy]["outs"], strict=True):
                a, b = torch.tensor(a), torch.tensor(b)  # the same int32 sums, other float order
                assert (a - b).abs().max() <= 1e-5 * b.abs().max(), policy
    if device == "cuda":  # the conversion on the GPU ran: experts were computed there
        assert grouped["value"]["gpu_pairs"] > 0 and grouped["lru"]["gpu_pairs"] > 0


def test_bad_setting_is_a_value_error():
    child = (
        "import torch\n"
        "from hybrid_moe import HybridMoELayer, Runtime\n"
        "from hybrid_moe.cpu_experts import quantize_q8_0\n"
        "from hybrid_moe.loaders.tensors import ExpertWeights\n"
        "w = ExpertWeights('q8_0', *(quantize_q8_0(torch.randn(*s)) for s in "
        "((2, 32, 64), (2, 32, 64), (2, 64, 32))))\n"
        "rt = Runtime(budget='0%', policy='cpu', device='cpu', threads=1, n_layers=1)\n"
        "try:\n"
        "    HybridMoELayer(rt, 0, w, top_k=1)\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    r = run_python(child, env={"HYBRID_MOE_Q8_ROWS16": "yes"})
    assert "ValueError:" in r.stdout and "HYBRID_MOE_Q8_ROWS16" in r.stdout, r.stderr[-2000:]
