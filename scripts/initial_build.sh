#!/usr/bin/env bash
# Full build: install the build tools into the active Python environment, then build and install
# hybrid-moe (with CUDA when nvcc is found) into it. Log: logs/initial_build-<time>.log.
# Later builds: scripts/quick_build.sh (incremental, same build folder).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p logs
log="logs/initial_build-$(date +%Y%m%d-%H%M%S).log"
echo "hybrid-moe full build; log: $log"
{
  echo "== environment"
  echo "python: $(command -v python) $(python --version 2>&1)"
  echo "HYBRID_MOE_CUDA=${HYBRID_MOE_CUDA:-AUTO} HYBRID_MOE_CUDA_ARCHS=${HYBRID_MOE_CUDA_ARCHS:-89;90}"
  command -v nvcc >/dev/null && nvcc --version | tail -n 1 || echo "nvcc: not found (CPU-only build)"
  echo "== build tools"
  python -m pip install --upgrade "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" "ninja>=1.10"
  echo "== dependencies"
  python -c "import torch" 2>/dev/null || python -m pip install torch
  python -m pip install numpy rich
  echo "== build + install (no build isolation: reuses build/ for incremental rebuilds)"
  time python -m pip install --no-build-isolation --no-deps -v .
  echo "== check"
  hybrid-moe info
} 2>&1 | tee "$log"
echo "done; log: $log"
