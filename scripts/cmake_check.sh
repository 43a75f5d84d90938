#!/usr/bin/env bash
# Builds edlm._C with CMake (the same sources as setup.py, from csrc/sources.txt) against the
# torch in .venv, then loads the library into a fresh process and checks the ops against plain
# PyTorch. Run after scripts/bootstrap.sh; CI runs it so CMakeLists.txt never rots.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # absolute, venv kept
BUILD=${BUILD:-build-cmake}
prefix=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DPython3_EXECUTABLE="$("$PYTHON" -c 'import sys; print(sys.executable)')" > "$BUILD.log" 2>&1 ||
  { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j 2 >> "$BUILD.log" 2>&1 || { tail -50 "$BUILD.log"; exit 1; }
lib="$PWD/$(ls "$BUILD"/_C*.so)"
(cd / && "$PYTHON" - "$lib" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])   # the CMake build alone, not the installed edlm
logits = torch.randn(3, 7, 11)
tokens = torch.randint(0, 11, (3, 7))
expect = logits.double().log_softmax(-1).gather(-1, tokens[..., None])[..., 0].sum(-1).float()
torch.testing.assert_close(torch.ops.edlm.sequence_logprob(logits, tokens, None), expect)
xt = torch.full((3, 7), 10)
out, logp = torch.ops.edlm.masked_sample(logits, xt, 10, num_samples=2)
assert out.shape == (3, 2, 7) and not bool((out == 10).any())
index, ess = torch.ops.edlm.importance_resample(logits[:, 0], num_samples=4)
assert index.shape == (3, 4) and bool((ess >= 1).all())
print("cmake_check: CMake build of edlm._C loads and matches plain PyTorch:", sys.argv[1])
PY
)
