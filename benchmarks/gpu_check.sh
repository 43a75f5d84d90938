#!/usr/bin/env bash
# The GPU check, sized for one command on a GPU machine (about 10 minutes a command there; this
# takes under 7 on an H100/H200 with 16 cores). In this order, each step appending to one results
# file as it ends, so that a run cut off still leaves what it got:
#   1. build edlm with its CUDA kernels for the card present only (TORCH_CUDA_ARCH_LIST = its
#      compute capability, MAX_JOBS = all cores);
#   2. the three op test files, their CUDA cases;
#   3. tests/test_cuda_sampling.py: edlm.sample (MDLM and EDLM) on CUDA against the exact law and
#      the CPU's draws, a tiny transformer, and a CUDA-graph capture and replay of one EDLM
#      importance-sampling step;
#   4. benchmarks/gpu_bench.py: the op table (median, GB/s, fraction of the device-to-device copy
#      bandwidth measured by torch and by cupy where importable, speedup over eager and compiled).
# `--full` then runs the rest of the suite. Each step has a time limit (GPU_CHECK_LIMITS, seconds,
# "build,ops,sampling,bench,full"); one that runs out is recorded as such and the next one starts.
# Without a GPU (or without a CUDA build of torch) the CUDA steps are skipped with a line saying so
# and the CPU parts run: the results file with the versions, and the test selections collected.
# Uses the python on PATH (or $PYTHON), with torch, setuptools, wheel, ninja, numpy and pytest;
# no network. Results: $GPU_CHECK_OUT (default results/gpu/). Exits non-zero on any failure.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
FULL=0
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--full]" >&2; exit 2 ;;
  esac
done
IFS=, read -r LIMIT_BUILD LIMIT_OPS LIMIT_SAMPLING LIMIT_BENCH LIMIT_FULL \
  <<<"${GPU_CHECK_LIMITS:-210,180,60,140,1800}"
start=$(date +%s)
outdir="${GPU_CHECK_OUT:-$ROOT/results/gpu}"
mkdir -p "$outdir"
out="$outdir/gpu_check-$(date -u +%Y%m%d-%H%M%S).md"
work="$(mktemp -d)"  # tests run from here, so that the source tree does not shadow the package
cfg="$(mktemp)"
trap 'rm -rf "$work" "$cfg"' EXIT
failed=0
say() { echo "gpu_check: $*"; }
record() { echo "$*" >>"$out"; say "$*"; }
elapsed() { echo "$(( $(date +%s) - start )) s"; }

# The machine, first, so that even a build failure leaves a file that says where it ran.
"$PY" - "$out" "$ROOT" <<'EOF'
import datetime, os, platform, subprocess, sys

import torch

out, root = sys.argv[1], sys.argv[2]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
gpu = torch.version.cuda is not None and torch.cuda.is_available()
card = torch.cuda.get_device_name() if gpu else "none visible to torch"
cap = "%d.%d" % torch.cuda.get_device_capability() if gpu else "-"
smi = run("nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader")
commit = run("git", "-C", root, "rev-parse", "--short", "HEAD") or "unknown"
dirty = " (with uncommitted changes)" if run("git", "-C", root, "status", "--porcelain") else ""
lines = [
    f"# GPU check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
    "",
    f"- card: {card} (compute capability {cap})",
    f"- driver: {smi.splitlines()[0] if smi else 'nvidia-smi not found'}",
    f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}",
    f"- host: {platform.node()}, {os.cpu_count()} cores; edlm at {commit}{dirty}",
    "",
]
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(f"gpu_check: {l}" for l in lines if l))
with open(out + ".gpu", "w") as f:
    f.write(cap if gpu else "")
EOF
[ -f "$out.gpu" ] || { say "cannot import torch with $PY" >&2; exit 1; }
ARCH="$(cat "$out.gpu")"
rm -f "$out.gpu"
say "results: $out"

# One step: its name, time limit and command; a line in the results file either way.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0 rc
  t0=$(date +%s)
  say "$name (limit $limit s)"
  timeout --kill-after=10 "$limit" "$@" >"$work/step.log" 2>&1
  rc=$?
  cat "$work/step.log"
  if [ "$rc" -eq 0 ]; then
    record "- $name: ok in $(( $(date +%s) - t0 )) s"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "- $name: TIMED OUT after $limit s"
    failed=1
  else
    record "- $name: FAILED (exit $rc) in $(( $(date +%s) - t0 )) s"
    failed=1
  fi
  return "$rc"
}

# The pytest summary lines of the last step ("... in 12.3s"), into the results file.
summary() {
  local line found=0
  while IFS= read -r line; do
    record "  - pytest: $line"
    found=1
  done < <(grep -E ' in [0-9.]+s( \([0-9:]+\))?$' "$work/step.log" | sed 's/^=* *//; s/ *=*$//')
  if [ "$found" = 0 ]; then record "  - pytest: no summary line"; fi
}

OP_TESTS=("$ROOT/tests/test_masked_sample.py" "$ROOT/tests/test_sequence_logprob.py"
  "$ROOT/tests/test_importance_resample.py")
SAMPLING_TESTS=("$ROOT/tests/test_cuda_sampling.py")
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

if [ -z "$ARCH" ]; then
  # No GPU: the CPU parts, then a clear line for each CUDA part.
  record ""
  record "No GPU visible to torch (torch.version.cuda = $("$PY" -c 'import torch; print(torch.version.cuda)')): the CUDA steps are skipped."
  cd "$work"
  step "collect the CUDA tests of steps 2 and 3 (CPU part)" "$LIMIT_OPS" \
    "${PYTEST[@]}" --collect-only -k cuda "${OP_TESTS[@]}" "${SAMPLING_TESTS[@]}"
  summary
  record "- SKIPPED build for the card: no GPU"
  record "- SKIPPED op tests on CUDA: no GPU"
  record "- SKIPPED CUDA end-to-end sampling and CUDA-graph replay: no GPU"
  record "- SKIPPED op benchmark table: no GPU"
  if [ "$FULL" = 1 ]; then record "- SKIPPED --full (the rest of the suite): no GPU"; fi
  record "- done in $(elapsed), CUDA parts skipped"
  exit "$failed"
fi

# 1. Build for this card only, with all cores, in its own build folder (no CPU-only objects reused).
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc || echo /none/bin/nvcc)")")"; do
    if [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ]; then
      export CUDA_HOME="$c"
      break
    fi
  done
fi
# Headers of torch's CUDA pip packages (cuBLAS, cuSPARSE, ... that ATen's CUDA headers include).
SITE="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
for d in "$SITE"/nvidia/cu[0-9]*/include; do
  if [ -d "$d" ]; then export CPATH="$d${CPATH:+:$CPATH}"; fi
done
export TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" EDLM_CUDA=1
record "- build: TORCH_CUDA_ARCH_LIST=$ARCH, MAX_JOBS=$MAX_JOBS, CUDA_HOME=${CUDA_HOME:-<setup.py asks nvcc>}"
printf '[build]\nbuild_base = build/gpu\n' >"$cfg"
mkdir -p "$ROOT/build"
export ROOT PY cfg work
build='cd "$ROOT" && DIST_EXTRA_CONFIG="$cfg" "$PY" -m pip install --disable-pip-version-check \
  --no-build-isolation --no-deps --no-index -v . >"$ROOT/build/gpu-build.log" 2>&1 ||
  { tail -n 60 "$ROOT/build/gpu-build.log"; exit 1; }
cd "$work" && "$PY" -c "import edlm; assert edlm._C.has_cuda(), \"built without CUDA kernels\""'
if ! step "build with CUDA kernels (log: build/gpu-build.log)" "$LIMIT_BUILD" bash -c "$build"; then
  record "- stopped: nothing to test without the build ($(elapsed))"
  exit 1
fi
cd "$work"

# 2. The op tests, CUDA cases only (the CPU cases are CI's).
step "op tests on CUDA" "$LIMIT_OPS" "${PYTEST[@]}" -k cuda "${OP_TESTS[@]}"
summary
# 3. End to end on CUDA, and the CUDA-graph capture.
step "CUDA sampling end to end and CUDA-graph replay" "$LIMIT_SAMPLING" \
  "${PYTEST[@]}" "${SAMPLING_TESTS[@]}"
summary
# 4. The op table (it checks each op against the reference before timing it).
record ""
record "## Op benchmark (benchmarks/gpu_bench.py)"
record ""
step "op benchmark table" "$LIMIT_BENCH" "$PY" "$ROOT/benchmarks/gpu_bench.py" --out "$out"
# --full: the rest of the suite, slow tests included.
if [ "$FULL" = 1 ]; then
  ignore=()
  for f in "${OP_TESTS[@]}" "${SAMPLING_TESTS[@]}"; do ignore+=("--ignore=$f"); done
  rest="$(printf '%q ' "${PYTEST[@]}") $ROOT/tests ${ignore[*]} && \
    $(printf '%q ' "${PYTEST[@]}") -k 'not cuda' ${OP_TESTS[*]}"
  step "the rest of the suite (--full)" "$LIMIT_FULL" bash -c "$rest"
  summary
fi
record ""
record "- done in $(elapsed)$([ "$failed" = 0 ] && echo ', all ok' || echo ', with failures')"
exit "$failed"
