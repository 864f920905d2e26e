"""hybrid-moe bench decode: routing produced on the device, hints, bounds, targets, and a reduced
CPU-only end-to-end run through the runtime's CPU path (policy cpu) checked against the kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybrid_moe import bench_decode as bd
from hybrid_moe.traces import synthetic_trace

SMALL_H, SMALL_I = 256, 128


def test_decode_routing_and_device_router_replay_every_step():
    tr = synthetic_trace("qwen3-30b-a3b", 5, seed=3)
    ids, w, cycled = bd.decode_routing(tr, 4, 7)
    assert cycled and ids.shape == (7, 4, 8) and w.shape == (7, 4, 8)
    np.testing.assert_array_equal(ids[5], ids[0])  # cyclic repeat
    np.testing.assert_array_equal(ids[:5], tr.ids[:5, :4])
    hints = bd.next_layer_hints(ids, 128, 0.8, seed=1)
    router = bd.DeviceRouter(ids, w, hints, 128, torch.device("cpu"))
    for step in range(9):  # wraps around after 7
        router.route_all()
        for li in range(4):
            got_ids, got_w = router.route(li)
            np.testing.assert_array_equal(got_ids.numpy()[0], ids[step % 7, li])
            np.testing.assert_allclose(got_w.numpy()[0], w[step % 7, li])
            logits = router.next_router(li)(torch.zeros(1, 16))
            assert set(np.flatnonzero(logits[0].numpy())) == set(hints[step % 7, li])
        router.advance()
    with pytest.raises(ValueError, match="exceeds"):
        bd.decode_routing(tr, 49, 3)


def test_next_layer_hints_accuracy_law():
    rng = np.random.default_rng(0)
    ids = np.stack(
        [np.stack([rng.permutation(128)[:8] for _ in range(6)]) for _ in range(400)]
    ).astype(np.int32)
    for acc in (0.0, 0.8, 1.0):
        h = bd.next_layer_hints(ids, 128, acc, seed=2)
        right = [
            len(set(h[s, li]) & set(ids[s, li + 1])) / 8 for s in range(400) for li in range(5)
        ]
        assert all(len(set(h[s, li])) == 8 for s in range(400) for li in range(5))
        assert np.mean(right) == pytest.approx(acc, abs=0.02)


def test_random_layer_weights_are_valid():
    for fmt in ("bf16", "q8_0"):
        w = bd.random_layer_weights(fmt, 4, 64, 32, seed=1)
        for t in (
            w.dequantize()
            if hasattr(w, "dequantize")
            else (w.gate.float(), w.up.float(), w.down.float())
        ):
            assert torch.isfinite(t).all() and (t != 0).float().mean() > 0.9
    with pytest.raises(ValueError, match="fmt"):
        bd.random_layer_weights("fp4", 4, 64, 32)


def test_layer_bound_takes_the_slower_side_of_each_layer_in_series():
    from types import SimpleNamespace as V

    prof = {"cpu": {"dram_read_gbps": 100.0}, "gpu": {"vram_gbps": 1000.0}}
    b = 3 * 2048 * 768 * 2  # bf16 expert bytes
    visits = [V(cpu_experts=2, gpu_experts=4), V(cpu_experts=0, gpu_experts=6)]
    want = (2 * b / 1e5 + 6 * b / 1e6) / 2  # layer 1: CPU-bound; layer 2: GPU only; 2 tokens
    assert bd.layer_bound_us(visits, 2, "bf16", 2048, 768, prof, 0.0) == pytest.approx(want)
    # never below the per-token bound's parts: the serial sum includes the CPU bytes, and PCIe
    assert bd.layer_bound_us(visits, 2, "bf16", 2048, 768, prof, 1e9) == 1e9
    per_token = bd.bandwidth_bound_us(1, 0, "bf16", 2048, 768, {**prof, "copy": {"h2d_gbps": 1}})
    assert bd.layer_bound_us(visits, 2, "bf16", 2048, 768, prof, 0.0) >= per_token["cpu_bound_us"]


def test_bandwidth_bound_and_targets():
    prof = {"cpu": {"dram_read_gbps": 100.0}, "copy": {"h2d_gbps": 50.0}}
    b = bd.bandwidth_bound_us(10, 1e6, "bf16", 2048, 768, prof)
    assert b["cpu_bound_us"] == pytest.approx(10 * 3 * 2048 * 768 * 2 / 1e5)
    assert b["pcie_bound_us"] == pytest.approx(20.0)
    assert b["bound_us"] == b["cpu_bound_us"]
    rows = [
        {
            "source": "s",
            "format": "bf16",
            "budget": 0.25,
            "policy": p,
            "tokens_per_s": tps,
            "measured_over_sim": 1.1,
            "measured_over_sim_fit": 0.7,  # a diagnostic: the target reads the plain prediction
            "measured_over_bound": 1.2,
        }
        for p, tps in (
            ("cpu", 10.0),
            ("static", 15.0),
            ("lru", 18.0),
            ("lru-fetch", 12.0),
            ("value", 30.0),
        )
    ]
    (t,) = bd.evaluate_targets(rows)
    assert (
        t["value_over_best_baseline"] == pytest.approx(30 / 18) and t["value_over_best_baseline_ok"]
    )
    assert t["value_over_cpu"] == pytest.approx(3.0) and t["value_over_cpu_ok"]
    assert t["value_within_sim_ok"] and t["value_within_bound_ok"]
    assert t["value_measured_over_sim_fit"] == 0.7
    rows[-1].update(tokens_per_s=20.0, measured_over_sim=1.3, measured_over_bound=1.4)
    (t,) = bd.evaluate_targets(rows)
    assert not t["value_over_best_baseline_ok"] and not t["value_over_cpu_ok"]
    assert not t["value_within_sim_ok"] and not t["value_within_bound_ok"]


def test_config_errors():
    with pytest.raises(ValueError, match="unknown policy"):
        bd.DecodeBenchConfig(policies=("belady",), device="cpu").validate()
    with pytest.raises(ValueError, match="only policy 'cpu'"):
        bd.DecodeBenchConfig(policies=("cpu", "value"), device="cpu").validate()
    with pytest.raises(ValueError, match="budgets"):
        bd.DecodeBenchConfig(budgets=(1.5,), device="cpu", policies=("cpu",)).validate()
    with pytest.raises(ValueError, match="formats"):
        bd.DecodeBenchConfig(formats=("fp8",), device="cpu", policies=("cpu",)).validate()
    with pytest.raises(ValueError, match="does not exist"):
        bd.load_source("/no/such/trace.csv", 4)
    with pytest.raises(ValueError, match="unknown value-policy parameter"):
        bd.DecodeBenchConfig(device="cpu", policies=("cpu",), value_params={"x": 1}).validate()
    with pytest.raises(ValueError, match="start with 'value-'"):
        bd.DecodeBenchConfig(
            device="cpu", policies=("cpu",), value_variants={"lru": {"stall_weight": 1}}
        ).validate()


def test_value_variants_resolve_to_the_value_policy():
    from hybrid_moe.commands.bench import parse_value_variants

    v = parse_value_variants(["value-s1:stall_weight=1,halflife_steps=12", "value-x:"])
    assert v == {"value-s1": {"stall_weight": 1.0, "halflife_steps": 12.0}, "value-x": {}}
    cfg = bd.DecodeBenchConfig(value_params={"stall_weight": 2.0}, value_variants=v)
    assert cfg.resolve("value-s1") == ("value", {"stall_weight": 1.0, "halflife_steps": 12.0})
    assert cfg.resolve("value") == ("value", {"stall_weight": 2.0})
    assert cfg.resolve("lru") == ("lru", {})
    for bad in (["s1:stall_weight=1"], ["value-a:x=1"], ["value-a:stall_weight=1", "value-a:"]):
        with pytest.raises(ValueError):
            parse_value_variants(bad)
    with pytest.raises(ValueError, match="--value-variant value-a expects KEY=VALUE"):
        parse_value_variants(["value-a:stall_weight"])


def test_static_placement_from_the_source_or_a_heat_profile(tmp_path):
    tr = synthetic_trace("qwen3-30b-a3b", 30, seed=4)
    cfg = bd.DecodeBenchConfig(layers=3, device="cpu", policies=("cpu",))
    notes: list[str] = []
    own = bd.static_frequency("synthetic:qwen3-30b-a3b", tr, cfg, 10, notes)
    # The source's steps after the 10 replayed ones, counted per layer.
    want = np.zeros((3, tr.n_expert))
    rows = [int(tr.step_offsets[s]) for s in tr.decode_steps()][10:]
    for r in rows:
        for li in range(3):
            np.add.at(want[li], tr.ids[r, li], 1.0)
    np.testing.assert_array_equal(own, want)
    assert "after the 10 replayed" in notes[-1]
    # A heat profile of other prompts replaces it (first `layers` rows).
    heat = np.random.default_rng(2).integers(0, 50, size=(5, tr.n_expert))
    f = tmp_path / "heat.json"
    f.write_text(json.dumps({"layers": [{"heat": h.tolist()} for h in heat]}))
    cfg_h = bd.DecodeBenchConfig(layers=3, device="cpu", policies=("cpu",), static_profile=str(f))
    cfg_h.validate()
    np.testing.assert_array_equal(
        bd.static_frequency("synthetic:qwen3-30b-a3b", tr, cfg_h, 10, notes), heat[:3]
    )
    assert "heat.json" in notes[-1]
    too_few = bd.DecodeBenchConfig(layers=6, device="cpu", policies=("cpu",), static_profile=str(f))
    with pytest.raises(ValueError, match="needs >= 6"):
        bd.static_frequency("synthetic:qwen3-30b-a3b", tr, too_few, 10, notes)
    with pytest.raises(ValueError, match="not a file"):
        bd.DecodeBenchConfig(device="cpu", policies=("cpu",), static_profile="/no/heat").validate()


def _runtime_available() -> bool:
    try:
        from hybrid_moe._native import native

        return hasattr(native, "Runtime")
    except ImportError:
        return False


@pytest.mark.skipif(not _runtime_available(), reason="hybrid_moe built without the native Runtime")
def test_cpu_reduced_end_to_end_matches_kernels(tmp_path):
    """Policy cpu through the runtime's CPU path, 2 layers, small experts: the decode loop's output
    equals the same loop over the CPU kernels (cpu_experts.run_layer), and the whole benchmark
    writes its table, JSON and plot."""
    from hybrid_moe.cpu_experts import CpuExpertStore, run_layer
    from hybrid_moe.layer import pack_expert_weights

    tr = synthetic_trace("qwen3-30b-a3b", 6, seed=0)
    ids, w, _ = bd.decode_routing(tr, 2, 6)
    hints = bd.next_layer_hints(ids, 128, 0.8)
    weights = bd.random_layer_weights("q8_0", 128, SMALL_H, SMALL_I, seed=4)
    router = bd.DeviceRouter(ids, w, hints, 128, torch.device("cpu"))
    rt, layers = bd.make_model(
        weights, 2, 8, "cpu", 0.0, "consumer-4090", 2, "cpu", None, 0.8, None
    )
    outs = []

    class Spy:
        def __init__(self, layer):
            self.layer = layer

        def __call__(self, x, i, wt):
            y = self.layer(x, i, wt)
            outs.append((x.clone(), i.clone(), wt.clone(), y.clone()))
            return y

    lat = bd.run_decode(
        [Spy(lay) for lay in layers], router, SMALL_H, 3, 1, "cpu", on_warm=rt.reset_stats
    )
    assert len(lat) == 3 and all(t > 0 for t in lat)
    fmt, packed = pack_expert_weights(weights)
    from hybrid_moe._native import native

    store = CpuExpertStore(
        fmt, SMALL_H, SMALL_I, packed, dict(native.expert_layout(fmt, SMALL_H, SMALL_I))
    )
    assert len(outs) == 8
    for n, (x, i, wt, y) in enumerate(outs):
        step, li = divmod(n, 2)
        np.testing.assert_array_equal(i.numpy()[0], ids[step, li])  # the replayed routing
        ref = run_layer(store, x, i, wt)
        assert torch.allclose(y, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    st = rt.stats()
    assert st["cpu_experts"] == 3 * 2 * 8 and st["gpu_experts"] == 0  # stats reset after warm-up

    cfg = bd.DecodeBenchConfig(
        sources=("synthetic:qwen3-30b-a3b",),
        formats=("q8_0",),
        budgets=(0.25,),
        policies=("cpu",),
        layers=2,
        tokens=3,
        warmup=1,
        hidden=SMALL_H,
        intermediate=SMALL_I,
        profile="consumer-4090",
        threads=2,
        device="cpu",
    )
    res = bd.run_benchmark(cfg, log=lambda s: None)
    (row,) = res["rows"]
    assert row["tokens_per_s"] > 0 and row["sim_tokens_per_s"] > 0
    assert row["cpu_experts_per_token"] == pytest.approx(16.0)  # 2 layers x 8 distinct experts
    assert row["bound_us"] > 0 and row["measured_over_sim_fit"] == pytest.approx(
        1.0
    )  # fitted on cpu
    assert any("2 layers" in n for n in res["notes"])
    bd.write_json(res, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["policy"] == "cpu"
    bd.plot(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.skipif(not _runtime_available(), reason="hybrid_moe built without the native Runtime")
def test_cli_cpu_reduced(tmp_path, capsys):
    from hybrid_moe.cli import main

    rc = main(
        [
            "bench",
            "decode",
            "--device",
            "cpu",
            "--policies",
            "cpu",
            "--formats",
            "bf16",
            "--budgets",
            "25%",
            "--layers",
            "2",
            "--tokens",
            "2",
            "--warmup",
            "1",
            "--hidden",
            str(SMALL_H),
            "--intermediate",
            str(SMALL_I),
            "--profile",
            "consumer-4090",
            "--threads",
            "2",
            "--json",
            str(tmp_path / "o.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "tok/s" in out and "elapsed" in out
    assert (tmp_path / "o.json").exists()
    assert (
        main(
            [
                "bench",
                "decode",
                "--device",
                "cpu",
                "--budgets",
                "200%",
                "--profile",
                "consumer-4090",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "bench",
                "decode",
                "--device",
                "cpu",
                "--policies",
                "value",
                "--profile",
                "consumer-4090",
            ]
        )
        == 2
    )


def test_decode_ratios_table_reads_bench_json():
    """bench/decode_ratios.py: value / best of static, lru, lru-fetch in the same run, value / cpu
    and value's measured / simulated and measured / bound, from a bench decode JSON."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "decode_ratios.py"
    spec = importlib.util.spec_from_file_location("decode_ratios", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok = {"cpu": 40.0, "static": 80.0, "lru": 100.0, "lru-fetch": 90.0, "value": 150.0}
    rows = [
        {"source": "t.csv", "format": "bf16", "budget": 0.25, "policy": p, "tokens_per_s": v}
        for p, v in tok.items()
    ]
    rows[-1].update(measured_over_sim=1.04, measured_over_bound=1.9)
    lines = mod.ratio_rows({"rows": rows})
    assert lines[0].endswith("| value / best | value / cpu | meas/sim | meas/bound |")
    assert lines[2] == (
        "| t.csv | bf16 | 25% | 40.0 | 80.0 | 100.0 | 90.0 | 150.0 | 1.50 | 3.75 | 1.04 | 1.90 |"
    )
    assert len(lines[1].split("|")) == len(lines[0].split("|"))
    # Without every baseline in the run there is no ratio to give: the row is left out.
    assert len(mod.ratio_rows({"rows": rows[:2] + rows[3:]})) == 2
