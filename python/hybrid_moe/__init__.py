"""hybrid-moe: run large Mixture-of-Experts models on one GPU too small for all their experts.

Expert weights stay in host DRAM, spare VRAM caches experts, and a cost-model-driven scheduler
decides per layer and step whether the CPU or the GPU computes each selected expert.
"""

from hybrid_moe._native import native
from hybrid_moe.layer import HybridMoELayer
from hybrid_moe.patch import patch
from hybrid_moe.runtime import Runtime
from hybrid_moe.system import cuda_available, info, set_cpu_isa

__version__ = native.__version__

__all__ = [
    "HybridMoELayer",
    "Runtime",
    "__version__",
    "cuda_available",
    "info",
    "native",
    "patch",
    "set_cpu_isa",
]
