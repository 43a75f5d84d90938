#!/usr/bin/env bash
# Build check of the CUDA kernels (cuda/*.cu) on a machine without a GPU: a second venv with the
# CUDA 13.0 build of torch, `EDLM_CUDA=1 pip install --no-build-isolation .`, a check that every op
# has a CUDA kernel registered, then the quick subset of the tests (-m "not slow") against that
# build (CUDA cases skip; .ci/run runs the whole suite once, on the CPU build).
# Exits non-zero on any failure. Env: EDLM_CUDA_VENV (default .venv-cuda), CUDA_HOME, MAX_JOBS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDLM_CUDA_VENV:-$ROOT/.venv-cuda}"
TORCH_SPEC="torch==2.14.1"  # a CUDA 13.0 build
say() { echo "ci_cuda_build: $*"; }
start=$(date +%s)

# The venv, with the CUDA build of torch.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
say "installing $TORCH_SPEC and the build/test dependencies into $VENV (slow the first time)"
"$PY" -m pip install --disable-pip-version-check -q "$TORCH_SPEC" numpy ninja pybind11 pytest \
  pytest-benchmark safetensors tqdm
"$PY" - <<'EOF'
import torch
assert torch.version.cuda is not None, f"torch {torch.__version__} has no CUDA"
print(f"ci_cuda_build: torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
TORCH_CUDA_MAJOR="$("$PY" -c 'import torch; print(torch.version.cuda.split(".")[0])')"

# The CUDA toolkit root: the folder with bin/nvcc and include/cuda_runtime.h, not the folder of
# the nvcc on PATH (that may be a wrapper script, e.g. /usr/local/bin/nvcc).
is_toolkit() { [ -n "$1" ] && [ -x "$1/bin/nvcc" ] && [ -f "$1/include/cuda_runtime.h" ]; }
toolkit_major() { "$1/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p'; }
find_cuda_home() {
  local c top
  for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    if is_toolkit "$c"; then echo "$c"; return 0; fi
  done
  if command -v nvcc >/dev/null; then  # where nvcc itself says it lives
    top="$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)"
    if [ -n "$top" ]; then
      top="$(cd "$top" && pwd -P)"
      if is_toolkit "$top" && [ "$(toolkit_major "$top")" = "$TORCH_CUDA_MAJOR" ]; then
        echo "$top"; return 0
      fi
    fi
  fi
  for c in "/usr/local/cuda-$TORCH_CUDA_MAJOR".* /usr/local/cuda "/opt/cuda"; do
    if is_toolkit "$c" && [ "$(toolkit_major "$c")" = "$TORCH_CUDA_MAJOR" ]; then
      echo "$c"; return 0
    fi
  done
  return 1
}
if ! CUDA_HOME="$(find_cuda_home)"; then
  say "no CUDA $TORCH_CUDA_MAJOR toolkit found (set CUDA_HOME to its root)" >&2
  exit 1
fi
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
say "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n1))"

# Headers of torch's CUDA pip packages (cuBLAS, cuSPARSE, ... that ATen's CUDA headers include).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for d in "$SITE"/nvidia/cu[0-9]*/include; do
  if [ -d "$d" ]; then
    export CPATH="$d${CPATH:+:$CPATH}"
    say "CPATH += $d"
  fi
done

# The build, in its own build folder so that it never reuses objects of a CPU-only build.
cfg="$(mktemp)"
trap 'rm -f "$cfg"' EXIT
printf '[build]\nbuild_base = build/cuda\n' >"$cfg"
log="$ROOT/build/cuda-build.log"
mkdir -p "$ROOT/build"
say "building edlm with CUDA kernels (log: $log)"
build_start=$(date +%s)
if ! (cd "$ROOT" && DIST_EXTRA_CONFIG="$cfg" EDLM_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" -m pip install --disable-pip-version-check --no-build-isolation -v . >"$log" 2>&1); then
  tail -n 60 "$log"
  say "build FAILED" >&2
  exit 1
fi
say "build ok in $(( $(date +%s) - build_start )) s"

# The CUDA kernels are there, and the tests pass against this build (from a folder that does not
# shadow the installed package).
work="$(mktemp -d)"
cd "$work"
"$PY" - <<'EOF'
import torch

import edlm

assert edlm._C.has_cuda(), "edlm._C was built without CUDA kernels"
for op in ("masked_sample", "sequence_logprob", "importance_resample"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"edlm::{op}", key), (op, key)
print("ci_cuda_build: edlm._C.has_cuda() = True; CPU and CUDA kernels registered for all 3 ops")
EOF
# The quick subset: the CPU build runs the whole suite afterwards (.ci/run).
"$PY" -m pytest "$ROOT/tests" -q -x -p no:cacheprovider -m "not slow"
say "all good in $(( $(date +%s) - start )) s"
