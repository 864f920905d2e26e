"""Routing traces: CSV/npz round trips, malformed-file errors, cache hit counting against hand
counts and an exhaustive optimum, the synthetic generator against the published statistics,
presets, and the `hybrid-moe trace` command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from hybrid_moe import native
from hybrid_moe.cli import main as cli_main
from hybrid_moe.presets import PRESETS, get_preset
from hybrid_moe.trace_model import DECODE, PREFILL, RouteTrace
from hybrid_moe.traces import (
    hit_rate_curves,
    load_trace,
    reuse_at_next,
    save_trace,
    synthetic_trace,
    top_share,
)

DEV = "qwen3-30b-a3b.top6.route.csv"
ARRAYS = ("ids", "weights", "step_offsets", "phase", "expert_bytes", "computed")


def assert_same(a: RouteTrace, b: RouteTrace) -> None:
    assert (a.n_layer, a.n_expert, a.top_k) == (b.n_layer, b.n_expert, b.top_k)
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


# ----------------------------------------------------------------------------- dev trace


def test_dev_trace_shape_and_reuse(traces_dir):
    t = load_trace(traces_dir / DEV)
    assert (t.n_layer, t.n_expert, t.top_k) == (48, 128, 6)
    assert int((t.phase == PREFILL).sum()) == 28 and int((t.phase == DECODE).sum()) == 128
    assert t.n_tokens == 156
    # llama.cpp runs the last layer of the prompt batch only for the output token.
    assert int((~t.computed).sum()) == 27 and not t.computed[:27, 47].any()
    assert t.computed[:, :47].all() and t.computed[27:].all()
    assert np.allclose(t.weights[t.computed].sum(axis=-1), 1.0, atol=1e-5)
    reuse = reuse_at_next(t)
    assert abs(reuse.mean() - 0.38) < 0.01  # README: "about 38%"
    with pytest.raises(ValueError, match=r"^line \d+: missing layer rows: prefill step 0"):
        load_trace(traces_dir / DEV, strict=True)


def test_dev_trace_round_trips(traces_dir, tmp_path):
    t = load_trace(traces_dir / DEV)
    save_trace(t, tmp_path / "dev.npz")
    assert_same(t, load_trace(tmp_path / "dev.npz"))
    save_trace(t, tmp_path / "dev.csv")
    back = load_trace(tmp_path / "dev.csv")
    assert_same(t, back)
    # and the CSV written by us converts again to the same npz content
    save_trace(back, tmp_path / "again.npz")
    assert_same(t, load_trace(tmp_path / "again.npz"))


def test_multi_token_steps_round_trip_through_csv(tmp_path):
    t = synthetic_trace(
        "mixtral-8x7b", decode_tokens=20, seed=3, prefill_tokens=50, prefill_chunk=16
    )
    assert np.diff(t.step_offsets)[:4].tolist() == [16, 16, 16, 2]
    for ext in ("csv", "npz"):
        save_trace(t, tmp_path / f"t.{ext}")
        assert_same(t, load_trace(tmp_path / f"t.{ext}"))


# ----------------------------------------------------------------------------- malformed


def small_csv(tmp_path) -> list[str]:
    """A valid route_trace v1 file (2 layers, 5 experts, k=2, 1 prefill + 2 decode steps)."""
    rng = np.random.default_rng(0)
    ids = np.array([rng.permutation(5)[:2] for _ in range(3 * 2)]).reshape(3, 2, 2)
    w = rng.random((3, 2, 2)).astype(np.float32) + 0.1
    t = RouteTrace(2, 5, 2, ids, w / w.sum(-1, keepdims=True), np.arange(4), np.array([0, 1, 1]))
    save_trace(t, tmp_path / "ok.csv")
    lines = (tmp_path / "ok.csv").read_text().splitlines()
    assert load_trace(tmp_path / "ok.csv").n_tokens == 3
    return lines


# Header: line 1 magic, 2 meta, 3-4 layer lines, 5 columns; rows from line 6:
# step 0 (prefill) layer 0 slots 0,1 = lines 6,7; layer 1 = 8,9; step 1 = lines 10-13; ...
@pytest.mark.parametrize(
    "edit, line, what",
    [
        (lambda L: L.__setitem__(0, "# route_trace v2"), 1, "bad header"),
        (lambda L: L.__setitem__(1, L[1].replace("n_layer=2 ", "")), 2, "missing n_layer"),
        (lambda L: L.__setitem__(1, L[1].replace("n_expert=5", "n_expert=x")), 2, "not an integer"),
        (lambda L: L.__setitem__(4, L[4].replace("slot", "slots")), 5, "expected columns"),
        (lambda L: L.__setitem__(7, L[7] + ",9"), 8, "wrong column count: expected 9, got 10"),
        (lambda L: L.__setitem__(8, L[8].replace(",0,", ",abc,", 1)), 9, "non-numeric field"),
        (lambda L: L.__setitem__(9, "0,0,0,1,1,7,0.5,0,0"), 10, "expert id 7 out of range"),
        (lambda L: L.__setitem__(9, "0,0,0,1,2,3,0.5,0,0"), 10, "inconsistent k"),
        (lambda L: L.__setitem__(9, "0,0,0,1,0,3,0.5,0,0"), 10, "duplicate row"),
        (lambda L: L.pop(11), 12, "missing slot rows: step 1 layer 1 has 1 of k=2"),
        (lambda L: [L.pop(11), L.pop(11)], 10, "missing layer rows: decode step 1"),
        (lambda L: L.__setitem__(10, L[10].replace("0,1,1,", "0,0,1,", 1)), 11, "phase"),
    ],
)
def test_malformed_csv_names_the_line(tmp_path, edit, line, what):
    lines = small_csv(tmp_path)
    edit(lines)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"^line {line}: .*{what}"):
        load_trace(bad)


def test_bad_paths_and_npz(tmp_path):
    with pytest.raises(ValueError, match=r"unknown extension '\.txt'"):
        load_trace(tmp_path / "x.txt")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_trace(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", ids=np.zeros(3))
    with pytest.raises(ValueError, match="missing keys"):
        load_trace(tmp_path / "other.npz")


# ----------------------------------------------------------------------------- hit counting


def one_layer_trace(steps: list[list[int]], n_expert: int) -> RouteTrace:
    k = len(steps[0])
    ids = np.array(steps, dtype=np.int32).reshape(len(steps), 1, k)
    return RouteTrace(
        1,
        n_expert,
        k,
        ids,
        np.full(ids.shape, 1.0 / k),
        np.arange(len(steps) + 1),
        np.full(len(steps), DECODE),
    )


def test_lru_and_belady_hand_counts():
    # capacity 2, one selection per step: 0 m, 1 m, 0 h, 2 m (LRU evicts 1), 1 m, 0 m -> 1 hit.
    # Belady evicts 0 at "2" (next use step 5, farther than 1's step 4): hits at 0 and 1 -> 2.
    t = one_layer_trace([[0], [1], [0], [2], [1], [0]], n_expert=4)
    c = hit_rate_curves(t, sizes=(2, 3), policies=("lru", "belady", "belady_bypass"))
    # With 3 slots nothing is evicted: 0 h, 1 h, 0 h -> 3 hits for every policy.
    assert c["lru_hits"][0].tolist() == [1, 3]
    assert c["belady_hits"][0].tolist() == [2, 3]
    assert c["belady_bypass_hits"][0].tolist() == [3, 3]  # 2 slots: never cache 2, keep 0 and 1
    assert c["selections"].tolist() == [6]
    # Prefill steps are not counted; decode starts with an empty cache.
    t2 = RouteTrace(1, 4, 1, t.ids, t.weights, t.step_offsets, np.array([0, 0, 1, 1, 1, 1]))
    assert hit_rate_curves(t2, sizes=(2,))["lru_hits"][0, 0] == 0  # 0 m, 2 m, 1 m, 0 m
    with pytest.raises(ValueError, match="capacity=1 is smaller than the 2 distinct experts"):
        hit_rate_curves(one_layer_trace([[0, 1]], 3), sizes=(1,))
    with pytest.raises(ValueError, match="unknown policy"):
        hit_rate_curves(t, policies=("fifo",))


def brute_force_hits(steps: list[list[int]], cap: int, must_hold: bool) -> int:
    """Most hits over every eviction choice (depth-first search over all residency choices)."""
    best = 0

    def go(s: int, cache: frozenset, hits: int) -> None:
        nonlocal best
        if s == len(steps):
            best = max(best, hits)
            return
        need = set(steps[s])
        h = sum(e in cache for e in steps[s])
        pool = sorted(cache | need)
        for r in range(len(pool) + 1):
            for keep in itertools.combinations(pool, r):
                if len(keep) <= cap and (not must_hold or need <= set(keep)):
                    go(s + 1, frozenset(keep), hits + h)

    go(0, frozenset(), 0)
    return best


def test_belady_equals_brute_force_optimum():
    rng = np.random.default_rng(7)
    for _ in range(30):
        n_expert = int(rng.integers(3, 6))
        k = int(rng.integers(1, 3))
        cap = int(rng.integers(k, n_expert))
        steps = [rng.permutation(n_expert)[:k].tolist() for _ in range(int(rng.integers(3, 7)))]
        t = one_layer_trace(steps, n_expert)
        c = hit_rate_curves(t, sizes=(cap,), policies=("lru", "belady", "belady_bypass"))
        assert c["belady_hits"][0, 0] == brute_force_hits(steps, cap, must_hold=True)
        assert c["belady_bypass_hits"][0, 0] == brute_force_hits(steps, cap, must_hold=False)
        assert c["lru_hits"][0, 0] <= c["belady_hits"][0, 0]


def test_native_cache_hits_checks_input():
    assert native.cache_hits(
        np.array([0, 1, 0], np.int32), np.array([0, 1, 2, 3]), 2, 1, "lru"
    ) == (0, 3)
    with pytest.raises(ValueError, match="out of range"):
        native.cache_hits(np.array([0, 5], np.int32), np.array([0, 1, 2]), 4, 2, "lru")
    with pytest.raises(ValueError, match="unknown cache policy"):
        native.cache_hits(np.array([0], np.int32), np.array([0, 1]), 4, 2, "fifo")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic():
    a = synthetic_trace("qwen3-30b-a3b", 200, seed=5, prefill_tokens=100, prefill_chunk=64)
    b = synthetic_trace("qwen3-30b-a3b", 200, seed=5, prefill_tokens=100, prefill_chunk=64)
    c = synthetic_trace("qwen3-30b-a3b", 200, seed=6, prefill_tokens=100, prefill_chunk=64)
    assert_same(a, b)
    assert not np.array_equal(a.ids, c.ids)
    assert a.phase.tolist()[:3] == [PREFILL, PREFILL, DECODE] and a.n_steps == 202
    assert np.allclose(a.weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.diff(a.weights, axis=-1) <= 0)  # slots ordered by weight
    assert all(len(set(row)) == 8 for row in a.ids.reshape(-1, 8)[:500].tolist())
    with pytest.raises(ValueError, match="unknown model preset 'qwen4'"):
        synthetic_trace("qwen4", 10)
    with pytest.raises(ValueError, match="prefill_chunk"):
        synthetic_trace("qwen3-30b-a3b", 10, prefill_tokens=5, prefill_chunk=0)


def test_synthetic_qwen3_matches_published_statistics():
    """../shared/traces/README.md: reuse ~43% (8% at layer 0 .. 60%); per-layer LRU 42/65/81/92
    and Belady 61/78/89/93 at N = 8/16/32/64; long-run top-16 share 29-46%, skewed in windows.
    The published Belady allows leaving a miss uncached (our belady_bypass); with every expert
    of a step resident and N = k = 8, Belady can only equal LRU."""
    t = synthetic_trace("qwen3-30b-a3b", 4000, seed=0)
    reuse = reuse_at_next(t)
    assert abs(reuse.mean() - 0.43) <= 0.03
    assert reuse[0] <= 0.15 and 0.52 <= reuse.max() <= 0.66
    c = hit_rate_curves(t, sizes=(8, 16, 32, 64), policies=("lru", "belady", "belady_bypass"))
    lru = 100 * c["lru"].mean(axis=0)
    bypass = 100 * c["belady_bypass"].mean(axis=0)
    assert np.all(np.abs(lru - [42, 65, 81, 92]) <= 4), lru
    assert np.all(np.abs(bypass - [61, 78, 89, 93]) <= 4), bypass
    assert np.array_equal(c["belady_hits"][:, 0], c["lru_hits"][:, 0])
    assert np.all(c["belady_hits"] >= c["lru_hits"])
    run = top_share(t)
    assert run.min() >= 0.27 and run.max() <= 0.48 and 0.29 <= run.mean() <= 0.46
    assert top_share(t, window=64).mean() >= run.mean() + 0.15  # a hot set over short windows


def test_presets_have_the_listed_shapes():
    want = {
        "qwen3-30b-a3b": (48, 128, 8, 2048, 768, 0),
        "qwen3-235b-a22b": (94, 128, 8, 4096, 1536, 0),
        "deepseek-v3": (58, 256, 8, 7168, 2048, 1),
        "mixtral-8x7b": (32, 8, 2, 4096, 14336, 0),
        "gpt-oss-120b": (36, 128, 4, 2880, 2880, 0),
    }
    assert set(want) <= set(PRESETS)
    for name, shape in want.items():
        p = get_preset(name)
        assert (p.n_layer, p.n_expert, p.top_k, p.hidden, p.intermediate, p.n_shared) == shape
        h, i = p.hidden, p.intermediate
        assert p.expert_bytes("bf16") == 3 * h * i * 2
        assert p.expert_bytes("q8_0") == 3 * h * i // 32 * 34
        for fmt in ("bf16", "q8_0"):  # the C++ layout's weight bytes agree
            assert p.expert_bytes(fmt) == native.expert_layout(fmt, h, i)["weight_bytes"]
        assert p.top16_share().shape == (p.n_layer,) and p.reuse_target().shape == (p.n_layer,)
    with pytest.raises(ValueError, match="unknown weight format"):
        get_preset("mixtral-8x7b").expert_bytes("fp8")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_generates(name):
    p = PRESETS[name]
    t = synthetic_trace(name, 64, seed=1, prefill_tokens=40, prefill_chunk=32)
    assert t.ids.shape == (104, p.n_layer, p.top_k)
    assert t.ids.min() >= 0 and t.ids.max() < p.n_expert
    assert 0.0 < reuse_at_next(t).mean() < 1.0


# ----------------------------------------------------------------------------- command


def test_trace_command(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert (
        cli_main(
            [
                "trace",
                "synth",
                "gpt-oss-120b",
                str(out),
                "--decode",
                "300",
                "--prefill",
                "64",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    assert cli_main(["trace", "convert", str(out), str(tmp_path / "s.csv")]) == 0
    assert_same(load_trace(out), load_trace(tmp_path / "s.csv"))
    capsys.readouterr()
    assert cli_main(["trace", "info", str(tmp_path / "s.csv"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["layers"], info["experts"], info["k"]) == (36, 128, 4)
    assert info["steps"] == {"prefill": 1, "decode": 300}
    assert len(info["per_layer"]["lru"]) == 36 and len(info["mean"]["belady"]) == 4
    assert cli_main(["trace", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Belady+bypass" in text and "reuse at t+1" in text
    bad = tmp_path / "bad.csv"
    bad.write_text("hello\n")
    assert cli_main(["trace", "info", str(bad)]) == 2
    assert "line 1: bad header" in capsys.readouterr().err
