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
