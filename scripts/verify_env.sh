#!/usr/bin/env bash
# Checks what a hybrid-moe build and run needs and says what is missing. Exit status: number of
# missing required items (0 = ready). Optional items (GPU, AMX) are reported, not required.
set -u
missing=0
ok() { printf '  [ok]      %s\n' "$*"; }
miss() { printf '  [MISSING] %s\n' "$*"; missing=$((missing + 1)); }
note() { printf '  [note]    %s\n' "$*"; }

echo "== compilers and build tools"
if command -v c++ >/dev/null; then ok "C++ compiler: $(c++ --version | head -n 1)"; else miss "C++ compiler (apt-get install build-essential)"; fi
if command -v cmake >/dev/null; then ok "cmake: $(cmake --version | head -n 1)"; else note "cmake not on PATH (pip installs it in the build environment)"; fi
if command -v ninja >/dev/null; then ok "ninja: $(ninja --version)"; else note "ninja not on PATH (pip installs it in the build environment)"; fi
if command -v nvcc >/dev/null; then
  ok "nvcc: $(nvcc --version | tail -n 1)"
else
  note "nvcc not found: the build will be CPU-only (set CUDACXX or add CUDA's bin to PATH for GPU support)"
fi
[ -n "${CUDA_HOME:-}" ] && ok "CUDA_HOME=$CUDA_HOME" || note "CUDA_HOME not set"
echo "HYBRID_MOE_CUDA=${HYBRID_MOE_CUDA:-AUTO} HYBRID_MOE_CUDA_ARCHS=${HYBRID_MOE_CUDA_ARCHS:-89;90 (default)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}"

echo "== GPU"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  ok "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
else
  note "no NVIDIA GPU or driver visible (nvidia-smi): the CPU path still works"
fi

echo "== Python"
py=$(command -v python3 || command -v python || true)
if [ -z "$py" ]; then
  miss "python3"
else
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then ok "python $ver ($py)"; else miss "python >= 3.10 (have $ver)"; fi
  "$py" -c 'import sysconfig, os; h = sysconfig.get_paths()["include"]; raise SystemExit(not os.path.exists(os.path.join(h, "Python.h")))' \
    && ok "Python headers" || miss "Python headers (apt-get install python3-dev)"
  if "$py" -c 'import torch' 2>/dev/null; then
    ok "$("$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU available:", torch.cuda.is_available())')"
  else
    miss "torch (pip install torch)"
  fi
  for mod in numpy pybind11 scikit_build_core; do
    "$py" -c "import $mod" 2>/dev/null && ok "$mod" || note "$mod not installed (pip installs it for the build)"
  done
fi

echo "== CPU"
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
for f in avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8; do
  case " $flags " in *" $f "*) ok "$f";; *) note "$f absent (slower CPU kernel variant)";; esac
done
echo "cores: $(nproc) logical"

echo
if [ "$missing" -eq 0 ]; then echo "ready: nothing required is missing"; else echo "$missing required item(s) missing"; fi
exit "$missing"
