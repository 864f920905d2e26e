"""The DRAM read-bandwidth reader that the CPU benchmark and `hybrid-moe calibrate` divide by."""

from __future__ import annotations

import math

import pytest

from hybrid_moe import native


def test_reader_returns_a_plausible_bandwidth():
    gbps = native.cpu_dram_read_gbps(128, 2, 3)
    # Any machine that runs this streams somewhere between 0.5 GB/s and 2 TB/s.
    assert math.isfinite(gbps) and 0.5 < gbps < 2000


@pytest.mark.parametrize(
    "mib, reps, message", [(8, 3, "mib must be >= 64"), (128, 0, "reps must be >= 1")]
)
def test_reader_rejects_bad_arguments(mib, reps, message):
    with pytest.raises(ValueError, match=message):
        native.cpu_dram_read_gbps(mib, 2, reps)


def test_burst_read_times_calls_of_cold_bytes():
    burst = 3 * (1 << 20) + 4096  # not a multiple of the item: the last item is short
    r = native.cpu_burst_read(burst, 64 << 10, 5, 2, 256)
    assert r["items"] == 49
    assert 0 < r["p10_us"] <= r["median_us"] <= r["p90_us"]
    assert math.isclose(r["gbps"], burst / (r["median_us"] * 1e3), rel_tol=1e-9)
    assert 0.05 < r["gbps"] < 2000


@pytest.mark.parametrize(
    "burst, item, bursts, buffer_mib, message",
    [
        (1 << 10, 4096, 5, 256, "burst_bytes must be >= 64 KiB"),
        (1 << 20, 1000, 5, 256, "item_bytes must be a multiple of 64"),
        (1 << 20, 2 << 20, 5, 256, "item_bytes must be a multiple of 64"),
        (1 << 20, 4096, 0, 256, "bursts must be >= 1"),
        (1 << 20, 4096, 5, 128, "buffer_bytes must be >="),
        (64 << 20, 4096, 5, 256, "buffer_bytes must be >="),
    ],
)
def test_burst_read_rejects_bad_arguments(burst, item, bursts, buffer_mib, message):
    with pytest.raises(ValueError, match=message):
        native.cpu_burst_read(burst, item, bursts, 2, buffer_mib)


def test_range_reader_reads_caller_memory():
    import torch

    # Two ranges, one starting off a 64-byte boundary: 40 + 30 MiB, >= the 64 MiB minimum.
    a = torch.randint(0, 255, (40 << 20,), dtype=torch.uint8)
    b = torch.randint(0, 255, ((30 << 20) + 100,), dtype=torch.uint8)
    ptrs, sizes = [a.data_ptr(), b.data_ptr() + 3], [a.numel(), b.numel() - 3]
    r = native.cpu_dram_read_ranges(ptrs, sizes, 2, 3)
    methods = dict(r["methods"])
    assert methods and r["best"] in methods
    assert r["best_gbps"] == max(methods.values())
    assert all(math.isfinite(v) and 0.5 < v < 2000 for v in methods.values())
    assert 0 <= r["huge_page_bytes"] <= sum(sizes)


@pytest.mark.parametrize(
    "ptrs, sizes, message",
    [
        ([1 << 20], [64 << 20, 1], "same length"),
        ([0], [64 << 20], "null pointer or size <= 0"),
        ([1 << 20], [0], "null pointer or size <= 0"),
    ],
)
def test_range_reader_rejects_bad_ranges(ptrs, sizes, message):
    with pytest.raises(ValueError, match=message):
        native.cpu_dram_read_ranges(ptrs, sizes, 2, 3)


def test_range_reader_rejects_cache_sized_ranges():
    import torch

    small = torch.ones(1 << 20, dtype=torch.uint8)
    with pytest.raises(ValueError, match=">= 64 MiB"):
        native.cpu_dram_read_ranges([small.data_ptr()], [small.numel()], 2, 3)
    big = torch.ones(64 << 20, dtype=torch.uint8)
    with pytest.raises(ValueError, match="reps must be >= 1"):
        native.cpu_dram_read_ranges([big.data_ptr()], [big.numel()], 2, 0)
