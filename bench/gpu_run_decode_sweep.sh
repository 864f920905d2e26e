#!/usr/bin/env bash
# GPU machine, one call (issue 6): build, `hybrid-moe calibrate`, then the 48-layer decode sweep
# (real trace + synthetic preset, budgets 10/25/50%, policies cpu/static/lru/lru-fetch/value) twice
# per format: static (and the caching policies' warm start) placed by the trace's own later tokens
# (the default), and placed by a co-activation profile of other prompts (--static-profile, as
# KTransformers' `frequency`). ~2 min per sweep and format on the lent H200.
# Env: TRACE (.carry/traces/qwen3-30b-a3b.top6.route.csv), HEAT (.carry/traces/
# qwen3-30b-a3b.coactivation.json; the shared traces are not on the GPU machine: carry them in the
# ignored .carry/ folder, never commit them), FORMATS (bf16; "bf16 q8_0" for both), SRC_TAR (a
# `git archive` tarball to build instead of the working tree), SKIP_BUILD=1 (use the package an
# earlier call installed), PROFILE (a calibrated profile JSON: skips `calibrate`), EXTRA (more
# `bench decode` arguments, e.g. "--value-variant value-s1:stall_weight=1"), PLACEMENTS ("self
# heat": which static placements to sweep). Logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
TRACE=${TRACE:-.carry/traces/qwen3-30b-a3b.top6.route.csv}
HEAT=${HEAT:-.carry/traces/qwen3-30b-a3b.coactivation.json}
FORMATS=${FORMATS:-bf16}
export PYTHONUNBUFFERED=1 COLUMNS=200
t0=$SECONDS
L=$OUT/log.txt
stage() { echo "=== [$((SECONDS - t0))s] $*" | tee -a "$L"; }
for f in "$TRACE" "$HEAT"; do [ -f "$f" ] || { echo "missing $f" | tee -a "$L"; exit 1; }; done
TRACE=$(realpath "$TRACE"); HEAT=$(realpath "$HEAT")
if [ -n "${SRC_TAR:-}" ]; then
  rm -rf /tmp/sweep_src && mkdir -p /tmp/sweep_src && tar -xf "$SRC_TAR" -C /tmp/sweep_src
  cd /tmp/sweep_src
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then  # SKIP_BUILD=1: the package installed by an earlier call
  stage build
  HYBRID_MOE_CUDA=ON HYBRID_MOE_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 200 \
    python3 -m pip install --no-build-isolation --no-deps -C build-dir=build/sweep . > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log" | tee -a "$L"; exit 1; }
fi
HM="python3 -m hybrid_moe.cli"

if [ -n "${PROFILE:-}" ]; then
  P=$(realpath "$PROFILE")
else
  stage calibrate
  timeout 90 $HM calibrate --base h200-lent --name h200-calibrated --out "$OUT/profile.json" 2>&1 \
    | tail -4 | tee -a "$L"
  P=$OUT/profile.json
  [ -f "$P" ] || P=h200-lent
fi
B="$HM bench decode --trace $TRACE --synthetic qwen3-30b-a3b --budgets 10%,25%,50% --profile $P --warmup 16 --tokens 32 --layers 48 ${EXTRA:-}"
F="tok/s|timeline|runtime with|Error|error|Traceback|note"
for fmt in $FORMATS; do
  if [[ " ${PLACEMENTS:-self heat} " == *" heat "* ]]; then
    stage "sweep $fmt, static placed by $(basename "$HEAT")"
    timeout 300 $B --formats "$fmt" --static-profile "$HEAT" --json "$OUT/decode_${fmt}_heat.json" 2>&1 \
      | grep -E "$F" | tee -a "$L"
  fi
  if [[ " ${PLACEMENTS:-self heat} " == *" self "* ]]; then
    stage "sweep $fmt, static placed by the sources' later tokens"
    timeout 300 $B --formats "$fmt" --json "$OUT/decode_$fmt.json" 2>&1 | grep -E "$F" | tee -a "$L"
  fi
done
stage done
