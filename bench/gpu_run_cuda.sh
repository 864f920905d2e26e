#!/usr/bin/env bash
# GPU machine, one call: build (sm_90), the GPU tests, the stress test (10,000 plans BF16, 2,000
# Q8_0), compute-sanitizer memcheck and racecheck on the stress test for both formats (reduced
# plan counts: the sanitizer is 10-100x slower; SAN_DECODE_TESTS=1 adds memcheck on the decode
# reference tests, all shapes incl. the Q8_0 fallback kernel), an Nsight Compute look at the
# decode kernels at Qwen3-30B-A3B shapes, then bench/bench_gpu.py; a short table last.
# STAGES picks stages (default: all): build tests stress san ncu bench [suite = whole pytest].
# Logs and JSON go to $OUT (default ./gpu_out), at most 8 files. Each stage is time-boxed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-build tests stress san ncu bench}
t0=$SECONDS
stage() { echo "=== [$((SECONDS - t0))s] $*"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
summary=()

if want build; then
  stage build
  HYBRID_MOE_CUDA=ON HYBRID_MOE_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 300 \
    python3 -m pip install --no-build-isolation --no-deps -C build-dir=build/gpu . > "$OUT/build.log" 2>&1
  rc=$?; summary+=("build rc=$rc"); tail -2 "$OUT/build.log"
  [ $rc -ne 0 ] && { grep -m20 -E "error|Error" "$OUT/build.log"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv >> "$OUT/build.log" 2>&1
fi

if want suite; then
  stage "pytest -q tests (whole suite)"
  timeout 240 python3 -m pytest -q tests > "$OUT/suite.txt" 2>&1
  rc=$?; summary+=("suite rc=$rc: $(tail -1 "$OUT/suite.txt")")
fi

if want tests; then
  stage "GPU tests"
  timeout 150 python3 -m pytest -q -rs tests/test_gpu_kernels.py tests/test_gpu_mover.py > "$OUT/tests.txt" 2>&1
  rc=$?; summary+=("gpu tests rc=$rc: $(tail -1 "$OUT/tests.txt")")
fi

if want stress; then
  for spec in bf16:10000 q8_0:2000; do
    f=${spec%%:*}; n=${spec##*:}
    stage "stress $f $n plans"
    HM_GPU_STRESS_FORMAT=$f HM_GPU_STRESS_PLANS=$n timeout 120 python3 -m pytest -q -s -p no:cacheprovider \
      tests/test_gpu_mover.py -k stress >> "$OUT/tests.txt" 2>&1
    rc=$?; summary+=("stress $f $n rc=$rc: $(grep 'stress:' "$OUT/tests.txt" | tail -1 | cut -c1-110)")
  done
fi

if want san; then
  : > "$OUT/sanitizer.txt"
  for spec in memcheck:bf16:500 memcheck:q8_0:500 racecheck:bf16:${RACE_PLANS:-100} racecheck:q8_0:${RACE_PLANS:-100}; do
    IFS=: read -r tool f n <<< "$spec"
    stage "compute-sanitizer $tool, stress $f $n plans"
    echo "##### $tool stress $f $n plans" >> "$OUT/sanitizer.txt"
    HM_GPU_STRESS_FORMAT=$f HM_GPU_STRESS_PLANS=$n timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 \
      python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu_mover.py -k stress >> "$OUT/sanitizer.txt" 2>&1
    rc=$?; summary+=("sanitizer $tool $f $n rc=$rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.txt" | tail -1)")
  done
  if [ "${SAN_DECODE_TESTS:-0}" = 1 ]; then
    stage "compute-sanitizer memcheck, decode reference tests"
    echo "##### memcheck decode reference tests" >> "$OUT/sanitizer.txt"
    timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider \
      tests/test_gpu_kernels.py -k "decode" >> "$OUT/sanitizer.txt" 2>&1
    rc=$?; summary+=("sanitizer memcheck decode tests rc=$rc: $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer.txt" | tail -1)")
  fi
fi

if want ncu && command -v ncu > /dev/null; then
  stage "ncu decode kernels"
  timeout 90 ncu --clock-control none -k "regex:gate_up|down_" --launch-count 8 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,sm__inst_executed.sum,launch__grid_size,launch__occupancy_limit_shared_mem,launch__occupancy_limit_registers \
    python3 bench/bench_gpu.py --ncu > "$OUT/ncu.txt" 2>&1
  rc=$?; summary+=("ncu rc=$rc")
fi

if want bench; then
  stage benchmarks
  timeout 240 python3 bench/bench_gpu.py --out "$OUT/results_gpu.json" > "$OUT/bench.txt" 2>&1
  rc=$?; summary+=("bench rc=$rc")
fi

stage done
printf '%s\n' "${summary[@]}"
grep -A40 "== GPU side" "$OUT/bench.txt" 2> /dev/null
