"""hybrid-moe calibrate: the fits recover known constants from synthetic measurements, a quick
CPU-only calibration here writes a profile that load_profile and the simulator accept, and bad
arguments raise clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid_moe import calibrate as cal
from hybrid_moe.cost_model import load_profile

H, INTER = 2048, 768
F1 = 2.0 * 3 * H * INTER  # flops per token per expert


# ------------------------------------------------------------------ fits
@pytest.mark.parametrize("fixed", [True, False])
def test_fit_roofline_recovers_constants(fixed):
    a, m, f = 5.0, 100.0, 3.0  # us, us, us per token: FLOP-bound from n = 33
    ns = [1, 4, 16, 64, 256]
    ts = [a + max(m, f * n) for n in ns]
    r = cal.fit_roofline(ns, ts, overhead_us=a if fixed else None)
    assert r.overhead_us == pytest.approx(a, rel=1e-9, abs=1e-9)
    assert r.mem_us == pytest.approx(m, rel=1e-9)
    assert r.us_per_token == pytest.approx(f, rel=1e-9)
    assert r.compute_bound_points == 2
    assert r.rms_error_us < 1e-9
    assert r.predict(1000) == pytest.approx(a + f * 1000)


def test_fit_roofline_with_noise_and_shuffled_points():
    rng = np.random.default_rng(0)
    a, m, f = 4.0, 200.0, 2.5
    ns = np.array([256, 1, 64, 4, 16, 512, 2], dtype=float)
    ts = (a + np.maximum(m, f * ns)) * (1 + 0.01 * rng.standard_normal(ns.size))
    r = cal.fit_roofline(ns, ts, overhead_us=a)
    assert r.mem_us == pytest.approx(m, rel=0.02)
    assert r.us_per_token == pytest.approx(f, rel=0.02)


def test_fit_roofline_all_memory_bound_gives_flop_rate_lower_bound():
    r = cal.fit_roofline([1, 2, 4], [50.0, 50.0, 50.0], overhead_us=10.0)
    assert r.mem_us == pytest.approx(40.0)
    assert r.compute_bound_points == 0
    assert r.us_per_token == pytest.approx(40.0 / 4)  # f * n_max = m: the slowest FLOP rate allowed


def test_fit_line_and_its_errors():
    lat, inv_bw = 20.0, 1 / 40e3  # 20 us + bytes / 40 GB/s
    xs = [2**18, 2**20, 2**22, 2**24]
    b, s = cal.fit_line(xs, [lat + x * inv_bw for x in xs])
    assert b == pytest.approx(lat) and s == pytest.approx(inv_bw)
    b, s = cal.fit_line([1, 2, 3], [0.5, 1.5, 2.5])  # free intercept -0.5 -> through the origin
    assert b == 0.0 and s > 0
    with pytest.raises(ValueError, match="distinct x"):
        cal.fit_line([1, 1], [1, 2])
    with pytest.raises(ValueError, match=">= 2"):
        cal.fit_roofline([1], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        cal.fit_roofline([0, 1], [1.0, 2.0])


# ------------------------------------------------------------------ profile from synthetic data
TRUE = {
    "dram": 100.0,
    "cpu_ovh": 4.0,
    "eff": {"bf16": 0.5, "q8_0": 0.4},
    "cpu_tf": {"bf16": 2.0, "q8_0": 3.0},
    "layer": 8.0,
    "gpu_ovh": 2.0,
    "vram": 4000.0,
    "gpu_tf": {"bf16": 400.0, "q8_0": 300.0},
    "lat": 20.0,
    "h2d": 40.0,
}


def _synthetic_rows():
    ebytes = {"bf16": 3 * H * INTER * 2, "q8_0": 3 * H * INTER // 32 * 34}
    cpu_rows, ovh_rows, gpu_rows = [], [], []
    for fmt in ("bf16", "q8_0"):
        B = ebytes[fmt]
        ovh_rows.append(
            {
                "format": fmt,
                "experts": 8,
                "expert_us": TRUE["cpu_ovh"],
                "layer_us": 8 * TRUE["cpu_ovh"],
            }
        )
        for n in (1, 4, 16, 64, 256):
            t = TRUE["cpu_ovh"] + max(
                B / (TRUE["dram"] * TRUE["eff"][fmt] * 1e3), F1 * n / (TRUE["cpu_tf"][fmt] * 1e6)
            )
            cpu_rows.append(
                {"format": fmt, "n": n, "experts": 16, "layer_us": 16 * t, "expert_us": t}
            )

        def tg(n, B=B, fmt=fmt):
            return TRUE["gpu_ovh"] + max(
                B / (TRUE["vram"] * 1e3), F1 * n / (TRUE["gpu_tf"][fmt] * 1e6)
            )

        for e in (1, 4, 16):
            gpu_rows.append(
                {
                    "format": fmt,
                    "kernel": "decode",
                    "n": 1,
                    "experts": e,
                    "layer_us": TRUE["layer"] + e * tg(1),
                }
            )
        for n, kern in (
            (4, "decode"),
            (16, "decode"),
            (64, "prefill"),
            (256, "prefill"),
            (1024, "prefill"),
        ):
            gpu_rows.append(
                {
                    "format": fmt,
                    "kernel": kern,
                    "n": n,
                    "experts": 16,
                    "layer_us": TRUE["layer"] + 16 * tg(n),
                }
            )
    copy_rows = [
        {"bytes": b, "copy_us": TRUE["lat"] + b / (TRUE["h2d"] * 1e3)}
        for b in (2**18, 2**20, 2**22, 2**26)
    ]
    return cpu_rows, ovh_rows, gpu_rows, copy_rows


def test_build_profile_recovers_known_constants():
    cpu_rows, ovh_rows, gpu_rows, copy_rows = _synthetic_rows()
    prof = cal.build_profile(
        cpu_rows=cpu_rows,
        overhead_rows=ovh_rows,
        dram_gbps=TRUE["dram"],
        gpu_rows=gpu_rows,
        copy_rows=copy_rows,
        base="consumer-4090",
        formats=["bf16", "q8_0"],
        hidden=H,
        intermediate=INTER,
        threads=16,
        name="synthetic",
    )
    load_profile(prof)
    rel = 2e-3
    assert prof["cpu"]["dram_read_gbps"] == pytest.approx(TRUE["dram"], rel=rel)
    assert prof["cpu"]["expert_overhead_us"] == pytest.approx(TRUE["cpu_ovh"], rel=rel)
    assert prof["gpu"]["layer_overhead_us"] == pytest.approx(TRUE["layer"], rel=rel)
    assert prof["gpu"]["expert_overhead_us"] == pytest.approx(TRUE["gpu_ovh"], rel=rel)
    assert prof["gpu"]["vram_gbps"] == pytest.approx(TRUE["vram"], rel=rel)
    assert prof["copy"]["latency_us"] == pytest.approx(TRUE["lat"], rel=rel)
    assert prof["copy"]["h2d_gbps"] == pytest.approx(TRUE["h2d"], rel=rel)
    for fmt in ("bf16", "q8_0"):
        f = prof["formats"][fmt]
        assert f["cpu_efficiency"] == pytest.approx(TRUE["eff"][fmt], rel=rel)
        assert f["cpu_tflops"] == pytest.approx(TRUE["cpu_tf"][fmt], rel=rel)
        assert f["gpu_tflops"] == pytest.approx(TRUE["gpu_tf"][fmt], rel=rel)
    assert prof["calibration"]["sources"]["gpu"] == "measured"
    assert prof["calibration"]["sources"]["layer_fixed_us"] == "base:consumer-4090"
    # The native cost model built from the profile reproduces every synthetic measurement.
    prof["measurements"]["gpu"] = gpu_rows
    rows = cal.comparison_rows(prof)
    assert len(rows) == len(cpu_rows) + len(gpu_rows) + len(copy_rows)
    for r in rows:
        assert r["ratio"] == pytest.approx(1.0, rel=5e-3), r


def test_build_profile_without_gpu_takes_base_numbers():
    cpu_rows, ovh_rows, _, _ = _synthetic_rows()
    base = load_profile("consumer-4090")
    prof = cal.build_profile(
        cpu_rows=cpu_rows,
        overhead_rows=ovh_rows,
        dram_gbps=TRUE["dram"],
        gpu_rows=[],
        copy_rows=[],
        base=base,
        formats=["bf16"],
        hidden=H,
        intermediate=INTER,
        threads=2,
        name="cpu-only",
    )
    assert prof["gpu"] == base["gpu"] and prof["copy"] == base["copy"]
    assert prof["formats"]["q8_0"] == base["formats"]["q8_0"]  # not calibrated: base
    assert prof["formats"]["bf16"]["gpu_tflops"] == base["formats"]["bf16"]["gpu_tflops"]
    assert prof["formats"]["bf16"]["cpu_efficiency"] == pytest.approx(0.5, rel=2e-3)
    src = prof["calibration"]["sources"]
    assert src["gpu"].startswith("base:consumer-4090") and src["copy"].startswith(
        "base:consumer-4090"
    )
    assert src["formats.q8_0"].startswith("base:consumer-4090")
    assert "no CUDA" in prof["description"]


def test_kernel_faster_than_torch_read_keeps_efficiency_in_range():
    cpu_rows, ovh_rows, _, _ = _synthetic_rows()
    prof = cal.build_profile(
        cpu_rows=cpu_rows,
        overhead_rows=ovh_rows,
        dram_gbps=30.0,
        gpu_rows=[],
        copy_rows=[],
        base="consumer-4090",
        formats=["bf16", "q8_0"],
        hidden=H,
        intermediate=INTER,
        threads=2,
        name="x",
    )
    assert prof["cpu"]["dram_read_gbps"] == pytest.approx(50.0, rel=2e-3)  # bf16 kernel: 0.5 * 100
    assert prof["formats"]["bf16"]["cpu_efficiency"] == pytest.approx(1.0)
    load_profile(prof)


# ------------------------------------------------------------------ GPU fit on real measurements
# measurements.gpu of `hybrid-moe calibrate` on the lent H200 (2026-11-28, .device run 11),
# medians of 7 repeats: (format, kernel, experts E, tokens per expert n, layer time us). The
# decode kernel streams an expert's weights once per (token, expert) pair: ~2.3 us per bf16 pair
# (9.4 MB at ~4 TB/s), so its time is ~linear in n from n = 1.
H200_GPU_ROWS = [
    ("bf16", "decode", 1, 1, 22.220),
    ("bf16", "decode", 4, 1, 21.364),
    ("bf16", "decode", 16, 1, 49.344),
    ("bf16", "decode", 16, 4, 167.692),
    ("bf16", "decode", 16, 16, 601.908),
    ("bf16", "prefill", 16, 64, 201.084),
    ("bf16", "prefill", 16, 256, 444.013),
    ("q8_0", "decode", 1, 1, 20.356),
    ("q8_0", "decode", 4, 1, 27.368),
    ("q8_0", "decode", 16, 1, 91.088),
    ("q8_0", "decode", 16, 4, 207.248),
    ("q8_0", "decode", 16, 16, 783.040),
    ("q8_0", "prefill", 16, 64, 402.108),
    ("q8_0", "prefill", 16, 256, 1083.383),
]


@pytest.fixture
def h200_gpu_rows():
    return [
        {"format": f, "kernel": k, "experts": e, "n": n, "layer_us": t}
        for f, k, e, n, t in H200_GPU_ROWS
    ]


def _profile_with_gpu_rows(gpu_rows, formats=("bf16", "q8_0")):
    cpu_rows, ovh_rows, _, copy_rows = _synthetic_rows()
    return cal.build_profile(
        cpu_rows=[r for r in cpu_rows if r["format"] in formats],
        overhead_rows=[r for r in ovh_rows if r["format"] in formats],
        dram_gbps=TRUE["dram"],
        gpu_rows=gpu_rows,
        copy_rows=copy_rows,
        base="consumer-4090",
        formats=list(formats),
        hidden=H,
        intermediate=INTER,
        threads=16,
        name="h200-real",
    )


def test_gpu_fit_reproduces_real_h200_decode_measurements(h200_gpu_rows):
    prof = _profile_with_gpu_rows(h200_gpu_rows)
    load_profile(prof)
    # Through the native cost model (cost_model.h), as the runtime and simulator see it.
    rows = [r for r in cal.comparison_rows(prof) if r["what"] == "gpu decode"]
    assert len(rows) == 10
    for r in rows:
        assert 1 / 1.3 <= r["ratio"] <= 1.3, r
    # Physically sane constants: ~4 TB/s of HBM (the old fit said 332 GB/s), a ~15 us launch.
    assert 3000 < prof["gpu"]["vram_gbps"] < 4800
    assert 5 < prof["gpu"]["layer_overhead_us"] < 22
    for fmt in ("bf16", "q8_0"):
        assert prof["fit"]["gpu"]["formats"][fmt]["tflops_from"] == "decode"
        # The prefill path's own line (not in cost_model.h's form) is recorded for reference.
        line = prof["fit"]["gpu"]["formats"][fmt]["prefill_line"]
        assert line["fixed_us"] > 50 and line["tflops"] > 10 * prof["formats"][fmt]["gpu_tflops"]


def test_gpu_fit_recovers_per_pair_decode_kernel_constants():
    # Decode rows FLOP-bound at every n (like the real kernel): L, g and both f recovered; the
    # bandwidth is then only bounded (memory term = FLOP term at n = 1 for the tighter format).
    L, g, tf = 15.0, 0.5, {"bf16": 4.0, "q8_0": 3.0}
    rows = []
    for fmt in ("bf16", "q8_0"):
        f = F1 / (tf[fmt] * 1e6)
        for e, n in ((1, 1), (4, 1), (16, 1), (16, 4), (16, 16)):
            rows.append(
                {
                    "format": fmt,
                    "kernel": "decode",
                    "experts": e,
                    "n": n,
                    "layer_us": L + e * (g + f * n),
                }
            )
    ebytes = {"bf16": 3 * H * INTER * 2, "q8_0": 3 * H * INTER // 32 * 34}
    fit = cal.fit_gpu_decode(rows, ["bf16", "q8_0"], ebytes, F1)
    assert fit["layer_overhead_us"] == pytest.approx(L, rel=1e-6)
    assert fit["expert_overhead_us"] == pytest.approx(g, rel=1e-6)
    assert fit["rms_log_error"] < 1e-9
    assert fit["vram_is_lower_bound"]
    for fmt in ("bf16", "q8_0"):
        assert fit["formats"][fmt]["tflops"] == pytest.approx(tf[fmt], rel=1e-6)
        assert fit["formats"][fmt]["mem_us"] <= fit["formats"][fmt]["us_per_token"] * (1 + 1e-9)
    with pytest.raises(ValueError, match="decode rows"):
        cal.fit_gpu_decode(rows[:1], ["bf16"], ebytes, F1)


def test_gpu_fit_single_format_reproduces_its_rows(h200_gpu_rows):
    rows = [r for r in h200_gpu_rows if r["format"] == "bf16"]
    prof = _profile_with_gpu_rows(rows, formats=("bf16",))
    for r in cal.comparison_rows(prof):
        if r["what"] == "gpu decode":
            assert 1 / 1.3 <= r["ratio"] <= 1.3, r


# ------------------------------------------------------------------ real (small) calibration here
SMALL = cal.CalibrationPlan(tokens=(1, 4), experts_per_call=8, pool_mib=24, dram_mib=64, reps=2)


def test_random_expert_bytes_are_valid():
    import torch

    from hybrid_moe._native import native
    from hybrid_moe.cpu_experts import CpuExpertStore, reference_layer, run_layer

    for fmt in ("bf16", "q8_0"):
        buf = cal.random_expert_bytes(fmt, 4, 64, 32, seed=1)
        store = CpuExpertStore(fmt, 64, 32, buf, dict(native.expert_layout(fmt, 64, 32)))
        g, u, d = store.dequantized()
        for w in (g, u, d):
            assert torch.isfinite(w).all() and (w != 0).float().mean() > 0.9
        x = torch.randn(3, 64)
        ids = torch.tensor([[0, 1], [2, 3], [1, 2]])
        wts = torch.rand(3, 2)
        got = run_layer(store, x, ids, wts)
        ref = reference_layer(g, u, d, x, ids, wts)
        assert torch.allclose(got, ref, rtol=5e-2, atol=5e-2 * ref.abs().max().item())


def test_calibrate_cpu_only_profile_loads_and_simulates(tmp_path):
    from hybrid_moe.sim import simulate
    from hybrid_moe.traces import synthetic_trace

    prof = cal.calibrate(plan=SMALL, use_gpu=False, threads=2, name="ci-test")
    assert prof["calibration"]["sources"]["gpu"].startswith("base:consumer-4090")
    assert prof["measured_on"]["machine"]["cpu_isa"]
    assert len(prof["measurements"]["cpu"]) == 4 and prof["measurements"]["gpu"] == []
    from hybrid_moe._native import native

    for row in prof["measurements"]["cpu"]:  # timed in the runtime's host packing
        assert row["packing"] == native.cpu_host_row_packing(row["format"])
    path = cal.write_profile(prof, tmp_path / "p.json")
    loaded = load_profile(str(path))
    assert loaded["name"] == "ci-test"
    for f in ("bf16", "q8_0"):
        assert 0 < loaded["formats"][f]["cpu_efficiency"] <= 1
    r = simulate(synthetic_trace("qwen3-30b-a3b", 16, seed=1), str(path), "value", "10%", "q8_0")
    assert r["tokens_per_s"] > 0 and r["profile"] == "ci-test"


def test_cli_writes_default_path_found_by_name(tmp_path, monkeypatch, capsys):
    from hybrid_moe import cost_model
    from hybrid_moe.cli import main

    monkeypatch.setattr(cost_model, "USER_PROFILE_DIR", tmp_path / "profiles")
    rc = main(
        [
            "calibrate",
            "--quick",
            "--no-gpu",
            "--formats",
            "bf16",
            "--tokens",
            "1,2",
            "--pool-mib",
            "24",
            "--threads",
            "2",
            "--name",
            "cli-test",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "elapsed" in out and "measured us" in out and "NOT measured" in out
    files = list((tmp_path / "profiles").glob("*.json"))
    assert len(files) == 1
    prof = load_profile(files[0].stem)  # found by name in the user folder
    assert prof["name"] == "cli-test"
    assert json.loads(files[0].read_text())["calibration"]["elapsed_s"] < 60


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--formats", "bf16,fp4"], "formats must be"),
        (["--tokens", "4"], "at least two distinct"),
        (["--tokens", "1,x"], "comma list of integers"),
        (["--base", "no-such-rig"], "unknown profile"),
        (["--out", "profile.txt"], "must name a .json"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--pool-mib", "0"], "pool_mib"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys):
    from hybrid_moe.cli import main

    assert main(["calibrate", "--no-gpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_calibrate_api_bad_arguments():
    import hybrid_moe

    with pytest.raises(ValueError, match="threads"):
        cal.calibrate(plan=SMALL, use_gpu=False, threads=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        cal.calibrate(plan=SMALL, use_gpu=False, hidden=100)
    if not hybrid_moe.cuda_available():
        with pytest.raises(ValueError, match="CUDA is unavailable"):
            cal.calibrate(plan=SMALL, use_gpu=True)
