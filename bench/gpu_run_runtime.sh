#!/usr/bin/env bash
# GPU machine, one call (issue 6, the runtime): build with CUDA (sm_90) in its own build folder,
# the runtime/layer/patch tests (GPU parts included: decode, prefill, CUDA-graph replay, 10,000-step
# memory test), then the whole pytest suite, then the runtime tests once more under
# compute-sanitizer memcheck (a small subset). Logs go to $OUT; a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
stage() { echo "=== [$((SECONDS - t0))s] $*"; }
summary=()

python3 -m pip install -q --no-deps .carry/gguf-*.whl > /dev/null 2>&1 || true

stage build
HYBRID_MOE_CUDA=ON HYBRID_MOE_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 150 \
  python3 -m pip install --no-build-isolation --no-deps -C build-dir=build/runtime-gpu . > "$OUT/build.log" 2>&1
rc=$?; summary+=("build rc=$rc"); tail -3 "$OUT/build.log"
[ $rc -ne 0 ] && { grep -m30 -E "error|Error" "$OUT/build.log"; exit 1; }
python3 -c "import hybrid_moe; print('cuda_available', hybrid_moe.cuda_available())" | tee "$OUT/info.txt"

stage "runtime tests"
timeout 140 python3 -m pytest -q -rs --durations=8 tests/test_runtime.py tests/test_patch_runtime.py \
  > "$OUT/runtime_tests.txt" 2>&1
rc=$?; summary+=("runtime tests rc=$rc: $(tail -1 "$OUT/runtime_tests.txt")")
grep -E "FAILED|Error|assert" "$OUT/runtime_tests.txt" | head -30

stage "whole pytest suite"
timeout 110 python3 -m pytest -q tests --deselect tests/test_runtime.py --deselect tests/test_patch_runtime.py \
  > "$OUT/pytest_all.txt" 2>&1
rc=$?; summary+=("whole suite (others) rc=$rc: $(tail -1 "$OUT/pytest_all.txt")")
grep -E "^FAILED|^ERROR" "$OUT/pytest_all.txt" | head -20

stage "compute-sanitizer memcheck (subset)"
if command -v compute-sanitizer > /dev/null; then
  timeout 45 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x \
    "tests/test_runtime.py::test_layer_matches_reference[cuda-value-30%-bf16]" \
    "tests/test_runtime.py::test_gpu_bad_inputs" > "$OUT/sanitizer.txt" 2>&1
  rc=$?; summary+=("memcheck rc=$rc: $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer.txt") $(tail -1 "$OUT/sanitizer.txt")")
fi

stage done
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
