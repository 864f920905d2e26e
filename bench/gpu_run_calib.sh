#!/usr/bin/env bash
# GPU machine, one call (issue 6 points 5 and 7): build (sm_90), the calibrate and decode-benchmark
# tests, `hybrid-moe calibrate` (full, must finish < 60 s), then `hybrid-moe bench decode`:
#   quick: 6 layers, bf16 + q8_0, budgets 10/25/50%, 5 policies, real trace + synthetic (~3 min);
#   full headline: 48 layers (the whole Qwen3-30B-A3B), bf16, budget 25%, real trace, 5 policies.
# The real trace travels in .carry/traces (copy of ../shared/traces/qwen3-30b-a3b.top6.route.csv;
# carry ".carry"). Every stage is time-boxed so the whole call stays under 10 minutes.
# Files in $OUT: build.log, log.txt, profile.json, decode_quick.json/.png, decode_full.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=200
t0=$SECONDS
LOG="$OUT/log.txt"
stage() { echo "=== [$((SECONDS - t0))s] $*" | tee -a "$LOG"; }
TRACE=.carry/traces/qwen3-30b-a3b.top6.route.csv
[ -f "$TRACE" ] || TRACE=../shared/traces/qwen3-30b-a3b.top6.route.csv

stage build
HYBRID_MOE_CUDA=ON HYBRID_MOE_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 240 \
  python3 -m pip install --no-build-isolation --no-deps -C build-dir=build/calib-gpu . > "$OUT/build.log" 2>&1
rc=$?; tail -2 "$OUT/build.log"
[ $rc -ne 0 ] && { grep -m20 -E "error|Error" "$OUT/build.log"; exit 1; }
HM="python3 -m hybrid_moe.cli"

stage tests
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_calibrate.py tests/test_bench_decode.py 2>&1 \
  | tail -5 | tee -a "$LOG"

stage "calibrate (full)"
timeout 100 $HM calibrate --base h200-lent --name h200-calibrated --out "$OUT/profile.json" 2>&1 | tee -a "$LOG" | tail -45
[ -f "$OUT/profile.json" ] || { echo "calibration failed"; exit 1; }

stage "bench decode --quick (6 layers, both formats, 3 budgets, 5 policies, real + synthetic)"
timeout 300 $HM bench decode --quick --trace "$TRACE" --synthetic qwen3-30b-a3b --profile "$OUT/profile.json" \
  --json "$OUT/decode_quick.json" --plot "$OUT/decode_quick.png" >> "$LOG" 2>&1
echo "rc=$?" | tee -a "$LOG"

left=$((570 - (SECONDS - t0)))
stage "bench decode full shape (48 layers, bf16, 25%, real trace), ${left}s left"
if [ $left -gt 90 ]; then
  timeout $left $HM bench decode --layers 48 --formats bf16 --budgets 25% --trace "$TRACE" --tokens 48 --warmup 16 \
    --profile "$OUT/profile.json" --json "$OUT/decode_full.json" >> "$LOG" 2>&1
  echo "rc=$?" | tee -a "$LOG"
fi
stage done
grep -E "targets|value|SHORT| ok|elapsed|note:" "$LOG" | tail -40
