#!/usr/bin/env bash
# Incremental rebuild after editing C++/CUDA or Python: reuses the persistent build folder
# (pyproject.toml: build-dir = "build/{wheel_tag}"), so only changed files recompile.
# Needs the build tools from scripts/initial_build.sh. Pass extra pip flags as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p logs
time python -m pip install --no-build-isolation --no-deps "$@" . 2>&1 | tee logs/quick_build.log | tail -n 3
python -c "import hybrid_moe; print('hybrid_moe', hybrid_moe.__version__, 'cuda_available:', hybrid_moe.cuda_available())"
