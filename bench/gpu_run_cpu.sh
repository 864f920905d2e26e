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
