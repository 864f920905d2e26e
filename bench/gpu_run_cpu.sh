#!/usr/bin/env bash
# CPU kernels on the lent GPU machine's 16-core Xeon (AMX, AVX512-BF16/VNNI), one call, ~4 min:
# CPU-only build, the CPU tests (every ISA variant, AMX included: Python face and C++ kernels),
# then the CPU MoE benchmark against torch bf16 and kt-kernel (AMXINT8, AMXINT4) with the
# per-call fixed-cost sweep, then a row-order A/B at T = 1, 4 and kt with every core as a worker.
# Every step has a `timeout`. Run from the repository root with .carry/ holding the wheels
# (../shared/wheels/README.md). With CPU_SRC_TAR=path (e.g. .carry/cpu_src.tar: `git archive` of
# a commit that builds, plus this issue's files copied over it) that snapshot is built instead of
# the working tree, so that another developer's half-edited file cannot break the run (used on
# 2026-11-28 while the committed runtime did not build CPU-only). Logs and JSON go to $OUT (<= 8).
# Env: THREADS (16), KT_THREADS (14: leaves cores to kt's task-queue thread and the spinning
# caller), LAYERS (4), SMOKE=1 (small sizes, for checking the script on a small machine).
set -uo pipefail
OUT=${OUT:-/tmp/hm_out}
mkdir -p "$OUT"
ROOT=$PWD
THREADS=${THREADS:-16}
KT_THREADS=${KT_THREADS:-14}
LAYERS=${LAYERS:-4}
t0=$SECONDS
stage() { echo "=== [$((SECONDS - t0))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ -n "${CPU_SRC_TAR:-}" ]; then
  rm -rf /tmp/cpu_src && mkdir -p /tmp/cpu_src && tar -xf "$CPU_SRC_TAR" -C /tmp/cpu_src
  cd /tmp/cpu_src
fi
lscpu > "$OUT/lscpu.txt" 2>&1
if [ "${SMOKE:-0}" = 1 ]; then  # small shapes: checks the script end to end, measures nothing
  BENCH="--hidden 512 --intermediate 256 --experts 16 --layers 2 --max-reps 3"
  TOKENS=1,4
  KT_TOKENS=1,4
  FIXED=2,4,8
else
  BENCH="--layers $LAYERS"
  TOKENS=1,4,16,64,256,512
  FIXED=8,16,32,64
fi

stage "build (CPU only)"
HYBRID_MOE_CUDA=OFF CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-16} timeout 150 python3 -m pip install \
  --no-build-isolation --no-deps -C build-dir=build/cpu-dev . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import hybrid_moe.system as s; i = s.info(); print(i['cpu_brand'], i['cpu_isa'], i['cpu_isa_reason'], i['cpu_variants_built'])" | tee "$OUT/info.txt"

stage "CPU tests (Python face, every ISA)"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cpu_experts.py tests/test_dram_read.py \
  > "$OUT/tests.log" 2>&1
echo "pytest rc=$?: $(tail -1 "$OUT/tests.log")" | tee -a "$OUT/info.txt"

stage "benchmark (ours, torch, kt with $KT_THREADS workers, fixed-cost sweep)"
timeout 150 python3 bench/bench_cpu_experts.py --threads "$THREADS" --kt-threads "$KT_THREADS" \
  --tokens "$TOKENS" --fixed-cost "$FIXED" $BENCH --json "$OUT/bench_cpu.json" \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$?" | tee -a "$OUT/info.txt"

stage "C++ CPU tests (every ISA)"
cmake -S . -B build/cpu-tests -G Ninja -DHYBRID_MOE_BUILD_TESTS=ON -DHYBRID_MOE_CUDA=OFF \
  > "$OUT/cpp_tests.log" 2>&1 \
  && timeout 120 cmake --build build/cpu-tests -j "${JOBS:-16}" --target hm_cpp_tests >> "$OUT/cpp_tests.log" 2>&1 \
  && { for f in cpu_ thread_pool; do timeout 60 build/cpu-tests/hm_cpp_tests $f; done >> "$OUT/cpp_tests.log" 2>&1; }
echo "C++ tests rc=$?: $(grep -c '\[ ok \]' "$OUT/cpp_tests.log") ok, $(grep -c FAILED "$OUT/cpp_tests.log") failed" | tee -a "$OUT/info.txt"

# A/B of the row order at T = 1, 4 (the main run used the default, streams), alternating, and
# kt-kernel with all 16 cores as workers (the main run gave it KT_THREADS).
stage "row order A/B (ours, T=1,4); kt with $THREADS workers"
for v in "HYBRID_MOE_ROW_ORDER=interleaved" "HYBRID_MOE_ROW_ORDER=streams"; do
  echo "$v" >> "$OUT/sweep.log"
  env $v timeout 30 python3 bench/bench_cpu_experts.py --threads "$THREADS" --tokens 1,4 \
    --kt "" --skip-torch $BENCH --layers 2 --max-reps 21 2>&1 | grep -E "^(DRAM|T= *[0-9]+ ours_\S+ +[0-9])" >> "$OUT/sweep.log"
done
echo "kt-kernel with --kt-threads $THREADS" >> "$OUT/sweep.log"
timeout 40 python3 bench/bench_cpu_experts.py --threads "$THREADS" --kt-threads "$THREADS" --isas none \
  --skip-torch --tokens "${KT_TOKENS:-1,4,512}" $BENCH 2>&1 | grep -E "^T= *[0-9]+ kt_\S+ +[0-9]" >> "$OUT/sweep.log"

stage "summary"
grep -E "^(DRAM|fixed cost|empty call|kt-kernel)" "$OUT/bench.log"
sed -n '/^per-layer ms/,$p' "$OUT/bench.log"
cat "$OUT/sweep.log"
cat "$OUT/info.txt"
cd "$ROOT"
