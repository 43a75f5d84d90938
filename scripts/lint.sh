#!/usr/bin/env bash
# Lint as CI does: ruff (format and check) over the whole tree, clang-format (Google style,
# 100 columns: .clang-format) over csrc/ and cuda/. Pinned versions, installed into .venv, so that
# a newer release cannot turn a clean tree red. `bash scripts/lint.sh --fix` rewrites in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EDLM_VENV:-.venv}
RUFF=0.17.6
CLANG_FORMAT=23.1.5
"$VENV/bin/python" -m pip --disable-pip-version-check -q install "ruff==$RUFF" "clang-format==$CLANG_FORMAT"
mapfile -t cxx < <(git ls-files -co --exclude-standard 'csrc/*.cpp' 'csrc/*.h' 'cuda/*.cu' 'cuda/*.cuh' \
  'csrc/**/*.cpp' 'csrc/**/*.h' | sort -u)
if [ "${1:-}" = "--fix" ]; then
  "$VENV/bin/ruff" format .
  "$VENV/bin/ruff" check --fix .
  "$VENV/bin/clang-format" -i "${cxx[@]}"
else
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/ruff" check .
  "$VENV/bin/clang-format" --dry-run --Werror "${cxx[@]}"
fi
echo "lint: ruff $RUFF and clang-format $CLANG_FORMAT clean (${#cxx[@]} C++/CUDA files)"
