#!/usr/bin/env bash
# CPU kernels on the lent GPU machine's 16-core Xeon (AMX, AVX512-BF16/VNNI): CPU-only build, the
# CPU kernel tests (every ISA variant, AMX included), then the CPU MoE benchmark against torch bf16
# and kt-kernel. Run from the repository root with .carry/ holding the wheels
# (../shared/wheels/README.md). Logs and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/hm_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/*.whl && export PYTHONPATH=/tmp/site
lscpu > "$OUT/lscpu.txt" 2>&1
echo "== build (CPU only)"
HYBRID_MOE_CUDA=OFF python3 -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import hybrid_moe.system as s; i = s.info(); print(i['cpu_brand'], i['cpu_isa'], i['cpu_isa_reason'], i['cpu_variants_built'])" | tee "$OUT/info.txt"
echo "== CPU kernel tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cpu_experts.py 2>&1 | tee "$OUT/tests.log" | tail -5
echo "== benchmark"
PYTHONUNBUFFERED=1 python3 bench/bench_cpu_experts.py --threads "${THREADS:-16}" --json "$OUT/bench_cpu.json" \
  2>&1 | tee "$OUT/bench.log" | tail -60
# Software prefetch distance of our SIMD kernels (default 1024 bytes per row stream, in the run
# above) at T = 1, 4, and kt-kernel with 2 cores left free for its unpinned task-queue thread and
# the spinning caller (see the kt note atop bench_cpu_experts.py). Logs only (8 files come back).
echo "== prefetch sweep (ours, T=1,4)"
for pf in 0 2048; do
  echo "HYBRID_MOE_PREFETCH=$pf" >> "$OUT/sweep.log"
  HYBRID_MOE_PREFETCH=$pf PYTHONUNBUFFERED=1 python3 bench/bench_cpu_experts.py --threads "${THREADS:-16}" \
    --tokens 1,4 --experts 64 --kt "" --skip-torch 2>&1 | grep -E "^T= *[0-9]+ ours_\S+ +[0-9]" >> "$OUT/sweep.log"
done
tail -20 "$OUT/sweep.log"
echo "== kt-kernel with $((${THREADS:-16} - 2)) workers"
PYTHONUNBUFFERED=1 python3 bench/bench_cpu_experts.py --threads "${THREADS:-16}" --kt-threads $((${THREADS:-16} - 2)) \
  --isas none --skip-torch --kt AMXINT8 --tokens 1,4,16,512 2>&1 | tee "$OUT/kt_threads.log" | grep -E "^T= *[0-9]+ kt_\S+ +[0-9]"
