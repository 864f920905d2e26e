"""Loads the compiled extension hybrid_moe._C with an error that says how to fix a bad install."""

try:
    from hybrid_moe import _C as native
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "hybrid_moe's native extension (hybrid_moe._C) could not be loaded: "
        f"{exc}. Reinstall with `pip install .` from the repository root; "
        "set HYBRID_MOE_CUDA=OFF to build without CUDA."
    ) from exc

__all__ = ["native"]
