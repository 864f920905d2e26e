"""CPU expert kernels vs a float32 torch reference, for every ISA variant this machine runs.

Tolerances (max |out - ref| <= tol * max |ref|), the reference using the store's own dequantised
weights so that only the kernel's arithmetic is measured:
  bf16 generic, avx2: 1e-4 (fp32 activations, fp32 sums; only the order of additions differs)
  bf16 avx512/amx: 2e-2 (x and h rounded to bf16 for vdpbf16ps / TDPBF16PS: 2^-9 relative each)
  q8_0 any ISA: 3e-2 (x and h quantised to 8 bits per 32-block, like llama.cpp); the same for
    q8_0 with rows in groups of 16 ("q8_0r16"), whose result must also equal the GGUF-row kernel's
    to 1e-5 relative (the same int32 block sums; only the order of the float additions differs)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from child_python import run_python
from hybrid_moe.cpu_experts import (
    CpuExpertStore,
    available_isas,
    dequantize_q8_0,
    quantize_q8_0,
    reference_layer,
    run_layer,
)

ISAS = available_isas()
TOL = {
    ("bf16", "generic"): 1e-4,
    ("bf16", "avx2"): 1e-4,
    ("bf16", "avx512"): 2e-2,
    ("bf16", "amx"): 2e-2,
}
SHAPES = {"bf16": (200, 72), "q8_0": (160, 96), "q8_0r16": (160, 96)}  # (H, I): not multiples of 64


def _store(fmt, E, H, I, seed):
    """bf16 / q8_0 stores, or "q8_0r16": the q8_0 store with rows in groups of 16."""
    base = CpuExpertStore.from_tensors(*_weights(E, H, I, seed), fmt=fmt.replace("r16", ""))
    return base.with_packing("q8_rows16") if fmt == "q8_0r16" else base


def _weights(E, H, I, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    return mk(E, I, H), mk(E, I, H), mk(E, H, I)


def _routing(T, E, k, seed):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    w = torch.rand(T, k, generator=g) + 0.1
    return ids, w


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["bf16", "q8_0", "q8_0r16"])
@pytest.mark.parametrize("T,E,k", [(1, 8, 8), (3, 6, 2), (17, 2, 2), (256, 8, 4)])
def test_layer_matches_float32_reference(fmt, isa, T, E, k):
    H, I = SHAPES[fmt]
    store = _store(fmt, E, H, I, seed=T)
    g = torch.Generator().manual_seed(99 + T)
    x = torch.randn(T, H, generator=g)
    ids, w = _routing(T, E, k, seed=T)
    out = run_layer(store, x, ids, w, threads=2, isa=isa)
    ref = reference_layer(*store.dequantized(), x, ids, w)
    tol = TOL.get((fmt, isa), 3e-2)
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert scale > 0.1
    assert err <= tol * scale, f"{fmt}/{isa} T={T}: max err {err:.3g} vs {tol} * {scale:.3g}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T,E,k", [(1, 8, 8), (5, 6, 3), (40, 3, 2)])
@pytest.mark.parametrize("H,I", [(160, 96), (2048, 64)])
def test_q8_rows16_equals_gguf_rows(isa, T, E, k, H, I):
    """The group code computes the GGUF-row code's int32 block sums: results agree to float
    rounding (a wrong byte of the packing would be off by far more)."""
    gguf = _store("q8_0", E, H, I, seed=5 + T)
    g = torch.Generator().manual_seed(7 + T)
    x = torch.randn(T, H, generator=g)
    ids, w = _routing(T, E, k, seed=T)
    a = run_layer(gguf, x, ids, w, threads=2, isa=isa)
    b = run_layer(gguf.with_packing("q8_rows16"), x, ids, w, threads=2, isa=isa)
    assert a.abs().max().item() > 0.1
    assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()


def test_accumulates_into_out_and_accepts_bf16_x():
    H, I, E = SHAPES["bf16"][0], SHAPES["bf16"][1], 4
    store = CpuExpertStore.from_tensors(*_weights(E, H, I, seed=5), fmt="bf16")
    x = torch.randn(3, H).to(torch.bfloat16)
    ids, w = _routing(3, E, 2, seed=5)
    base = torch.randn(3, H)
    out = run_layer(store, x, ids, w, isa="generic", out=base.clone())
    ref = reference_layer(*store.dequantized(), x.float(), ids, w) + base
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def test_expert_pointers_as_array_or_list_give_the_same_bits():
    from hybrid_moe._native import native

    H, I, E = SHAPES["q8_0"][0], SHAPES["q8_0"][1], 6
    store = CpuExpertStore.from_tensors(*_weights(E, H, I, seed=6), fmt="q8_0")
    x = torch.randn(2, H)
    ids, w = _routing(2, E, 3, seed=6)
    tok = np.repeat(np.arange(2, dtype=np.int32), 3)
    eid = ids.to(torch.int32).reshape(-1).numpy()
    wf = w.to(torch.float32).reshape(-1).numpy()
    outs = []
    arr = store.expert_ptr_array()
    assert arr.dtype == np.uint64 and arr.tolist() == store.expert_ptrs()
    assert not arr.flags.writeable
    for ptrs in (arr, store.expert_ptrs(), arr.astype(np.int64)):  # in place, list, converted
        out = torch.zeros(2, H)
        native.cpu_moe_layer(
            "q8_0", H, I, ptrs, x.data_ptr(), 2, tok, eid, wf, out.data_ptr(), 2, "", "gguf"
        )
        outs.append(out)
    assert outs[0].abs().max() > 0
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    with pytest.raises(TypeError, match="expert_ptrs must be a 1-D uint64 numpy array"):
        native.cpu_moe_layer(
            "q8_0", H, I, "abc", x.data_ptr(), 2, tok, eid, wf, out.data_ptr(), 2, "", "gguf"
        )
    with pytest.raises(ValueError, match="expert_ptrs must be 1-D"):
        native.cpu_moe_layer(
            "q8_0", H, I, arr.reshape(2, 3), x.data_ptr(), 2, tok, eid, wf, out.data_ptr(), 2,
            "", "gguf",
        )  # fmt: skip


def test_expert_pointer_array_follows_the_store_data():
    H, I, E = SHAPES["bf16"][0], SHAPES["bf16"][1], 3
    store = CpuExpertStore.from_tensors(*_weights(E, H, I, seed=7), fmt="bf16")
    first = store.expert_ptr_array()
    assert store.expert_ptr_array() is first  # cached
    store.data = store.data.clone()  # new memory: the cache must not hand out the old addresses
    assert store.expert_ptr_array().tolist() == store.expert_ptrs() != first.tolist()


def test_q8_0_matches_gguf_quantizer():
    gguf = pytest.importorskip("gguf")
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(5, 96, generator=g) * 0.3).numpy()
    ours = quantize_q8_0(w).numpy()
    theirs = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(ours, np.asarray(theirs).reshape(ours.shape))
    back = dequantize_q8_0(ours).numpy()
    assert np.abs(back - w).max() <= np.abs(w).max() / 127 * 0.51 + 1e-3


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(ids=a["ids"] + 100), "topk_ids must be in"),
        (lambda a: a.update(ids=a["ids"].float()), "topk_ids must be int32/int64"),
        (lambda a: a.update(x=a["x"][:, :-1]), "x must be a tensor"),
        (lambda a: a.update(x=a["x"].double()), "x must be float32 or bfloat16"),
        (lambda a: a.update(w=a["w"][:, :1]), "topk_weights must be a tensor of shape"),
        (lambda a: a.update(w=a["w"] * float("nan")), "topk_weights must be finite"),
        (lambda a: a.update(isa="sse9"), "isa must be one of"),
        (lambda a: a.update(threads=0), "threads must be a positive int"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, match):
    H, I = SHAPES["bf16"]
    store = CpuExpertStore.from_tensors(*_weights(4, H, I, seed=1), fmt="bf16")
    ids, w = _routing(2, 4, 2, seed=1)
    args = {"x": torch.randn(2, H), "ids": ids, "w": w, "isa": None, "threads": None}
    change(args)
    with pytest.raises(ValueError, match=match):
        run_layer(
            store, args["x"], args["ids"], args["w"], threads=args["threads"], isa=args["isa"]
        )


def test_store_rejects_bad_weights():
    g, u, d = _weights(2, 64, 32, seed=0)
    with pytest.raises(ValueError, match="fmt must be one of"):
        CpuExpertStore.from_tensors(g, u, d, fmt="q4_k")
    with pytest.raises(ValueError, match="down must have shape"):
        CpuExpertStore.from_tensors(g, u, d[:, :, :-1], fmt="bf16")
    g2, u2, d2 = _weights(2, 72, 40, seed=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        CpuExpertStore.from_tensors(g2, u2, d2, fmt="q8_0")


def test_isa_unavailable_is_a_value_error():
    if "amx" in ISAS:
        pytest.skip("this machine runs every variant")
    H, I = SHAPES["bf16"]
    store = CpuExpertStore.from_tensors(*_weights(2, H, I, seed=2), fmt="bf16")
    ids, w = _routing(1, 2, 1, seed=2)
    with pytest.raises(ValueError, match="amx"):
        run_layer(store, torch.randn(1, H), ids, w, isa="amx")


_TUNING_CHILD = """
import torch
from hybrid_moe.cpu_experts import CpuExpertStore, available_isas, reference_layer, run_layer
g = torch.Generator().manual_seed(11)
# (224, 96) bf16 and (160, 96) q8_0 use the AMX tiles (n % 32 == 0) with odd k-step counts;
# T=40 over 3 experts gives groups of >= 8 tokens (tiles) and two token tiles.
cases = [("bf16", (200, 72), 2e-2), ("bf16", (224, 96), 2e-2), ("q8_0", (160, 96), 3e-2),
         ("q8_0r16", (160, 96), 3e-2)]
for fmt, (H, I), tol in cases:
    for T, E, k in ((9, 6, 3), (40, 3, 2)):
        mk = lambda *s: torch.randn(*s, generator=g) * 0.05
        store = CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I),
                                            fmt=fmt.replace("r16", ""))
        if fmt == "q8_0r16":
            store = store.with_packing("q8_rows16")
        x = torch.randn(T, H, generator=g)
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
        w = torch.rand(T, k, generator=g) + 0.1
        ref = reference_layer(*store.dequantized(), x, ids, w)
        for isa in [i for i in available_isas() if i != "generic"]:
            err = (run_layer(store, x, ids, w, threads=2, isa=isa) - ref).abs().max().item()
            assert err <= tol * ref.abs().max().item(), (fmt, isa, T, err)
print("ok")
"""


@pytest.mark.parametrize(
    "env",
    [
        {"HYBRID_MOE_ROW_ORDER": "streams", "HYBRID_MOE_PREFETCH_HINT": "l2"},
        {
            "HYBRID_MOE_PREFETCH": "0",
            "HYBRID_MOE_PREFETCH_HINT": "nta",
            "HYBRID_MOE_BARRIER_WARM": "0",
        },
        {"HYBRID_MOE_AMX_KERNEL": "simple", "HYBRID_MOE_PREFETCH_LINES": "step"},
        {"HYBRID_MOE_AMX_KERNEL": "pipelined"},
        {"HYBRID_MOE_Q8_KERNEL": "pair", "HYBRID_MOE_PREFETCH_HINT": "l1"},
        {"HYBRID_MOE_Q8_KERNEL": "quad", "HYBRID_MOE_ROW_ORDER": "streams"},
        {"HYBRID_MOE_ROW_ORDER": "interleaved"},  # AVX2's default is streams
        {"HYBRID_MOE_ITEM_ROWS": "56,148"},  # one item per worker (session 7's A/B)
        {"HYBRID_MOE_ITEM_ROWS": "4,4"},  # Q8_0 phase 1 rounds up to whole 32-value blocks
        {"HYBRID_MOE_ITEM_ROWS": "32,16"},  # the small-call default before session 10
        {},  # the defaults, on shapes and group sizes that use the AMX tiles
    ],
)
def test_tuning_settings_keep_results_exact(env):
    """The SIMD variants under the non-default tuning settings (read once per process, hence a
    child process) against the float32 reference."""
    if ISAS == ["generic"]:
        pytest.skip("no SIMD variant on this machine")
    r = run_python(_TUNING_CHILD, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize(
    "var,value,fmt",
    [
        ("HYBRID_MOE_ROW_ORDER", "diagonal", "bf16"),
        ("HYBRID_MOE_AMX_KERNEL", "fast", "bf16"),
        ("HYBRID_MOE_PREFETCH_LINES", "some", "bf16"),
        ("HYBRID_MOE_ITEM_ROWS", "32", "bf16"),
        ("HYBRID_MOE_Q8_KERNEL", "octo", "q8_0"),  # read by the Q8_0 code only
        ("HYBRID_MOE_Q8_GROUP_PASS", "3", "q8_0r16"),  # read by the AVX512 group code
        ("HYBRID_MOE_DATAFLOW", "yes", "bf16"),
        ("HYBRID_MOE_CALLER_HELPS", "yes", "bf16"),
        ("HYBRID_MOE_BARRIER_WARM", "off", "bf16"),  # was read as "on" before session 10
    ],
)
def test_bad_tuning_setting_is_a_value_error(var, value, fmt):
    if var in ("HYBRID_MOE_Q8_KERNEL", "HYBRID_MOE_Q8_GROUP_PASS") and "avx512" not in ISAS:
        pytest.skip(f"{var} selects AVX512 code")
    child = (
        "import torch\n"
        "from hybrid_moe.cpu_experts import CpuExpertStore, run_layer\n"
        "s = CpuExpertStore.from_tensors(*(torch.randn(2, 32, 64) for _ in range(2)), "
        f"torch.randn(2, 64, 32), fmt='{fmt.replace('r16', '')}')\n"
        + ("s = s.with_packing('q8_rows16')\n" if fmt == "q8_0r16" else "")
        + "try:\n"
        "    run_layer(s, torch.randn(1, 64), torch.tensor([[0]]), torch.ones(1, 1))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    r = run_python(child, env={var: value})
    assert r.stdout.startswith("ValueError:") and var in r.stdout, r.stderr


_GROUP_PASS_CHILD = """
import sys, torch
from hybrid_moe.cpu_experts import CpuExpertStore, available_isas, run_layer
g = torch.Generator().manual_seed(8)
mk = lambda *s: torch.randn(*s, generator=g) * 0.05
H, I, E = 160, 96, 8  # 10 and 6 groups of 16 rows: pairs, and an odd group left over
store = CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I), fmt="q8_0")
store = store.with_packing("q8_rows16")
outs = {}
for T, k in ((1, 6), (2, 3)):  # single-token groups: the T=1 group code
    x = torch.randn(T, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    w = torch.rand(T, k, generator=g) + 0.1
    for isa in available_isas():
        outs[(T, isa)] = run_layer(store, x, ids, w, threads=2, isa=isa)
torch.save(outs, sys.argv[1])
"""


def _outputs_under(child, var, values, tmp_path):
    """{value: the dict of outputs `child` saves} with environment variable `var` set to each
    value (unset for "")."""
    outs = {}
    for v in values:
        path = tmp_path / f"{v or 'unset'}.pt"
        r = run_python(child, str(path), env={var: v or None})
        assert r.returncode == 0, r.stderr[-2000:]
        outs[v] = torch.load(path)
    return outs


def _assert_same_bits(outs, base):
    for v, got in outs.items():
        assert got.keys() == outs[base].keys()
        for key, out in outs[base].items():
            assert torch.equal(got[key], out), (v, key)


def test_q8_group_pass_setting_gives_the_same_bits(tmp_path):
    """HYBRID_MOE_Q8_GROUP_PASS=2 (AVX512: two groups per pass at one token) against 1."""
    if "avx512" not in ISAS:
        pytest.skip("HYBRID_MOE_Q8_GROUP_PASS selects AVX512 code")
    outs = _outputs_under(_GROUP_PASS_CHILD, "HYBRID_MOE_Q8_GROUP_PASS", ("1", "2"), tmp_path)
    _assert_same_bits(outs, "1")


_ITEM_ROWS_CHILD = """
import sys, torch
from hybrid_moe.cpu_experts import CpuExpertStore, available_isas, run_layer
g = torch.Generator().manual_seed(9)
mk = lambda *s: torch.randn(*s, generator=g) * 0.05
H, I, E = 224, 96, 8
outs = {}
for fmt in ("bf16", "q8_0"):
    store = CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I), fmt=fmt)
    for T, k in ((1, 1), (1, 6), (3, 2)):  # one expert (barrier mode), decode (dataflow), T=3
        x = torch.randn(T, H, generator=g)
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
        w = torch.rand(T, k, generator=g) + 0.1
        for isa in available_isas():
            outs[(fmt, T, k, isa)] = run_layer(store, x, ids, w, threads=3, isa=isa)
torch.save(outs, sys.argv[1])
"""


def test_item_rows_give_the_same_bits(tmp_path):
    """Work items only split rows between threads: each output row's sums run in the same order
    whatever the items (the default against session 9's 32,16 and 8,128)."""
    settings = ("", "32,16", "8,128")
    outs = _outputs_under(_ITEM_ROWS_CHILD, "HYBRID_MOE_ITEM_ROWS", settings, tmp_path)
    _assert_same_bits(outs, "")
