#!/usr/bin/env bash
# On a GPU machine (no network needed): build edlm with its CUDA kernels for the card present, run
# the whole test suite (CUDA cases included), then benchmarks/gpu_bench.py, which appends its
# table to BENCHMARKS.md. Uses the python on PATH (or $PYTHON), which must already have torch with
# CUDA, setuptools, wheel, ninja, numpy and pytest. Exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
say() { echo "gpu_check: $*"; }
start=$(date +%s)

"$PY" - <<'EOF'
import torch
assert torch.version.cuda is not None, f"torch {torch.__version__} is a CPU build"
assert torch.cuda.is_available(), "no GPU visible to torch"
print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

# Compile for this card only.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
say "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

# The toolkit root (setup.py also asks nvcc where it lives when CUDA_HOME is unset or wrong).
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc || echo /none/bin/nvcc)")")"; do
    if [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ]; then
      export CUDA_HOME="$c"
      break
    fi
  done
fi
say "CUDA_HOME=${CUDA_HOME:-<setup.py will ask nvcc>}"
# Headers of torch's CUDA pip packages (cuBLAS, cuSPARSE, ... included by ATen's CUDA headers).
SITE="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
for d in "$SITE"/nvidia/cu[0-9]*/include; do
  if [ -d "$d" ]; then export CPATH="$d${CPATH:+:$CPATH}"; fi
done

# Build and install against this torch; its own build folder, so no CPU-only objects are reused.
cfg="$(mktemp)"
trap 'rm -f "$cfg"' EXIT
printf '[build]\nbuild_base = build/gpu\n' >"$cfg"
say "building (log: $ROOT/build/gpu-build.log)"
mkdir -p "$ROOT/build"
if ! (cd "$ROOT" && DIST_EXTRA_CONFIG="$cfg" EDLM_CUDA=1 "$PY" -m pip install \
    --disable-pip-version-check --no-build-isolation --no-deps --no-index -v . \
    >"$ROOT/build/gpu-build.log" 2>&1); then
  tail -n 60 "$ROOT/build/gpu-build.log"
  say "build FAILED" >&2
  exit 1
fi
say "build ok"

# Tests and benchmark from a folder that does not shadow the installed package.
work="$(mktemp -d)"
cd "$work"
"$PY" -c 'import edlm, torch; assert edlm._C.has_cuda(); print("gpu_check: CUDA kernels built")'
tests_rc=0
"$PY" -m pytest "$ROOT/tests" -q -p no:cacheprovider || tests_rc=$?
# The benchmark checks its own results against the reference before timing, so it runs even if
# an unrelated test failed; the script still fails in that case.
"$PY" "$ROOT/benchmarks/gpu_bench.py" --out "$ROOT/BENCHMARKS.md"
if [ "$tests_rc" -ne 0 ]; then
  say "tests FAILED (pytest exit $tests_rc); benchmark done" >&2
  exit "$tests_rc"
fi
say "done in $(( $(date +%s) - start )) s"
