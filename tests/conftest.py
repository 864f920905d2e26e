"""Shared pytest fixtures: where the shared traces are, and skips for missing hardware."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The team's shared/ folder: $HYBRID_MOE_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("HYBRID_MOE_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture
def traces_dir() -> Path:
    """../shared/traces; the test is skipped when the folder is absent (outside this team)."""
    d = shared_dir() / "traces"
    if not d.is_dir():
        pytest.skip(f"shared traces not found at {d}")
    return d


@pytest.fixture
def cuda_device():
    """Skips the test unless hybrid_moe was built with CUDA and a CUDA device is present."""
    import hybrid_moe

    if not hybrid_moe.cuda_available():
        pytest.skip("no CUDA device (or hybrid_moe built without CUDA)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch.device("cuda")
