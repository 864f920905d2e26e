#!/usr/bin/env bash
# GPU machine, one call: build (sm_90), info, the whole pytest suite, the GPU stress test with
# 10,000 plans, the stress test under compute-sanitizer memcheck and racecheck (reduced to 500
# plans: the sanitizer is ~100x slower), then the GPU benchmarks; a short table last.
# Logs and JSON go to $OUT (default ./gpu_out). Each stage is time-boxed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
stage() { echo "=== [$((SECONDS - t0))s] $*"; }
summary=()

stage build
HYBRID_MOE_CUDA=ON HYBRID_MOE_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 300 \
  python3 -m pip install --no-build-isolation --no-deps -C build-dir=build/cuda-gpu . > "$OUT/build.log" 2>&1
rc=$?; summary+=("build rc=$rc"); tail -3 "$OUT/build.log"
[ $rc -ne 0 ] && { grep -m20 -E "error|Error" "$OUT/build.log"; exit 1; }

stage info
{
  python3 -c "import hybrid_moe, json; print(json.dumps(hybrid_moe.info(), indent=1)); print(hybrid_moe.cuda_available())"
  hybrid-moe info || "$(dirname "$(command -v python3)")/hybrid-moe" info
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
} > "$OUT/info.txt" 2>&1

stage "pytest -q tests"
timeout 240 python3 -m pytest -q tests > "$OUT/pytest.txt" 2>&1
rc=$?; summary+=("pytest rc=$rc: $(tail -1 "$OUT/pytest.txt")")
{ echo; echo '$ python3 -m pytest -q tests'; cat "$OUT/pytest.txt"; } >> "$OUT/info.txt"

stage "GPU tests alone"
timeout 120 python3 -m pytest -q -rs tests/test_gpu_kernels.py tests/test_gpu_mover.py > "$OUT/pytest_gpu.txt" 2>&1
rc=$?; summary+=("gpu tests rc=$rc: $(tail -1 "$OUT/pytest_gpu.txt")")

stage "stress 10000 plans"
HM_GPU_STRESS_PLANS=10000 timeout 150 python3 -m pytest -q -s tests/test_gpu_mover.py -k stress > "$OUT/stress.txt" 2>&1
rc=$?; summary+=("stress 10000 rc=$rc: $(grep -m1 'stress:' "$OUT/stress.txt" | cut -c1-120)")

for tool in memcheck racecheck; do
  stage "compute-sanitizer $tool, 500 plans"
  HM_GPU_STRESS_PLANS=500 timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 \
    python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu_mover.py -k stress > "$OUT/sanitizer_$tool.txt" 2>&1
  rc=$?; summary+=("sanitizer $tool rc=$rc: $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.txt")")
done
cat "$OUT"/sanitizer_*.txt > "$OUT/sanitizer.txt"; rm -f "$OUT"/sanitizer_*.txt

stage benchmarks
timeout 200 python3 bench/bench_gpu.py --out "$OUT/results_gpu.json" > "$OUT/bench.txt" 2>&1
rc=$?; summary+=("bench rc=$rc")

stage done
printf '%s\n' "${summary[@]}"
tail -8 "$OUT/bench.txt"
