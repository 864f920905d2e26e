#!/usr/bin/env bash
# GPU machine, one call (~7 min): what sessions 4-5 changed but could not run there.
# 1. CUDA build + the whole pytest suite (the clang-formatted .cu sources of session 4; the AVX2
#    variant and the huge-page stores of session 5 on the Xeon, which runs avx2 as well as
#    avx512/amx in the CPU tests).
# 2. CPU benchmark at T=1, 4 with the benchmark's stores on 4 KiB pages vs advised to huge pages
#    (HYBRID_MOE_HUGEPAGES=0/1, alternating, two rounds): does the Xeon gain what the Zen 3 dev
#    machine did (bench/RESULTS.md, session 5)?
# Then, in a second call on the warm machine: SKIP_BUILD=1 OUT=$OUT bash bench/gpu_run_decode_sweep.sh
# Run from the repository root with .carry/wheels/*.whl (gguf; ../shared/wheels/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/wheels/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
t0=$SECONDS
OUT=$OUT STAGES="build suite" bash bench/gpu_run_cuda.sh
echo "=== [$((SECONDS - t0))s] huge pages A/B (CPU benchmark)"
for r in 1 2; do
  for hp in 0 1; do
    HYBRID_MOE_HUGEPAGES=$hp timeout 90 python3 bench/bench_cpu_experts.py --threads 16 --layers 4 \
      --tokens 1,4 --kt "" --skip-torch --dram-gib 1 --max-reps 15 --json "$OUT/thp${hp}_$r.json" \
      2>&1 | grep -E "^T=.*ms |DRAM read \(" | sed "s/^/hugepages=$hp round $r: /"
  done
done
echo "=== [$((SECONDS - t0))s] done"
