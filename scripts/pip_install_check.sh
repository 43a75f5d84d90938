#!/usr/bin/env bash
# Plain `pip install .` as a user runs it: a fresh venv with torch only (nothing reused from this
# machine's environments), `pip install .` with no flags from a clean clone of this checkout (its
# committed state), then an op runs from the installed package. Then the same install in a venv
# without torch must stop with setup.py's one message (install torch first), not a traceback.
# `--all` also checks `pip install -e .` and `uv pip install .` (uv installed into the venv).
# Exits non-zero on any failure. Env: EDLM_TORCH_SPEC (default torch==2.13.0), MAX_JOBS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${EDLM_TORCH_SPEC:-torch==2.13.0}"
ALL=0
if [ "${1:-}" = "--all" ]; then ALL=1; fi
say() { echo "pip_install_check: $*"; }
start=$(date +%s)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git clone -q "$ROOT" "$tmp/src"

# The op from the installed package (run from a folder that does not shadow it).
check_import() {
  (cd "$tmp" && "$1" - <<'EOF'
from pathlib import Path
import sys

import torch

import edlm

lw = torch.tensor([[0.0, -1.0, float("-inf")], [2.0, 2.0, 2.0]])
index, ess = edlm.ops.importance_resample(lw, num_samples=64, generator=torch.Generator().manual_seed(0))
assert index.shape == (2, 64) and bool((index[0] < 2).all()), index
assert abs(ess[1].item() - 3.0) < 1e-5, ess
where = Path(edlm._C.__file__).resolve()
print(f"pip_install_check: edlm._C from {where} (torch {torch.__version__}): importance_resample ok")
EOF
  )
}

# 1. A venv with torch only, then `pip install .` with no flags.
python3 -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip --disable-pip-version-check -q)
say "fresh venv with $TORCH_SPEC only"
"${pip[@]}" install "$TORCH_SPEC"
say "pip install . (no flags) from a clean clone"
(cd "$tmp/src" && "${pip[@]}" install .)
check_import "$tmp/venv/bin/python"
case "$(cd "$tmp" && "$tmp/venv/bin/python" -c 'import edlm; print(edlm.__file__)')" in
  "$tmp/venv/"*) ;;
  *) say "edlm was not imported from the venv" >&2; exit 1 ;;
esac

if [ "$ALL" = 1 ]; then
  say "pip install -e . (no flags)"
  "${pip[@]}" uninstall -y edlm
  (cd "$tmp/src" && "${pip[@]}" install -e .)
  check_import "$tmp/venv/bin/python"
  say "uv pip install . (from the clone's folder)"
  "${pip[@]}" uninstall -y edlm
  "${pip[@]}" install uv
  (cd "$tmp/src" && rm -rf build && VIRTUAL_ENV="$tmp/venv" "$tmp/venv/bin/uv" pip install -q \
    ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} .)
  check_import "$tmp/venv/bin/python"
fi

# 2. No torch anywhere: one clear message, no traceback.
python3 -m venv "$tmp/bare"
say "pip install . in a venv without torch (must fail with the install-torch-first message)"
if (cd "$tmp/src" && "$tmp/bare/bin/python" -m pip --disable-pip-version-check -q install . \
    >"$tmp/bare.log" 2>&1); then
  say "pip install . succeeded without torch" >&2
  exit 1
fi
if ! grep -q "edlm: torch is not installed in" "$tmp/bare.log" ||
   ! grep -q "pip install torch --index-url .*/cpu" "$tmp/bare.log" ||
   ! grep -q "pip install torch --index-url .*/cu" "$tmp/bare.log" ||
   grep -q "Traceback" "$tmp/bare.log"; then
  cat "$tmp/bare.log"
  say "the no-torch failure is not the one clear message" >&2
  exit 1
fi
say "no torch: pip stops with the message:"
sed -n '/edlm: torch is not installed/,/bootstrap.sh/p' "$tmp/bare.log"
say "all good in $(( $(date +%s) - start )) s"
