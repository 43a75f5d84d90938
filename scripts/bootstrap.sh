#!/usr/bin/env bash
# Sets up .venv for edlm: the torch you already have (CPU or CUDA build) or torch==2.13.0 (CPU),
# the build tools and dependencies, and edlm itself built against that torch (with CUDA kernels
# when torch has CUDA and nvcc is found). Safe to rerun: it rebuilds edlm from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EDLM_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "bootstrap: reusing the torch of $PY ($("$PY" -c 'import torch; print(torch.__version__)'))"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "bootstrap: installing torch==2.13.0"
  "${pip[@]}" install torch==2.13.0
fi
"${pip[@]}" install setuptools wheel ninja pybind11 numpy
# Rebuild only when the sources or the torch they build against changed since the last build here.
stamp="$VENV/.edlm-build-stamp"
sources=$( (git ls-files -co --exclude-standard setup.py pyproject.toml csrc cuda python 2>/dev/null ||
            find setup.py pyproject.toml csrc cuda python -type f) | LC_ALL=C sort | xargs sha256sum | sha256sum)
key="$sources $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$VENV/bin/python" -c "import edlm._C" 2>/dev/null; then
  echo "bootstrap: edlm is up to date with this checkout"
else
  echo "bootstrap: building edlm against torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
  "${pip[@]}" install --no-build-isolation ".[test]"
  echo "$key" > "$stamp"
fi
"$VENV/bin/python" -c "import edlm; print('bootstrap: edlm', edlm.__version__, 'ready; CPU kernels:', edlm.ops.cpu_capability())"
