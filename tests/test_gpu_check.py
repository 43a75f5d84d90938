"""benchmarks/gpu_check.sh on a machine without a GPU: valid bash, its CPU parts run (the results
file with the versions, the CUDA test selections collected), and each CUDA part is skipped with a
line that says so. CUDA_VISIBLE_DEVICES is emptied, so this holds on a GPU machine too."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def run(tmp_path, *args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    env["GPU_CHECK_OUT"] = str(tmp_path)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow  # imports torch twice and collects four test files (10-60 s)
def test_without_a_gpu_runs_the_cpu_parts_and_skips_the_cuda_parts(tmp_path):
    r = run(tmp_path, "--full")
    assert r.returncode == 0, r.stdout + r.stderr
    (out,) = tmp_path.glob("gpu_check-*.md")
    text = out.read_text()
    assert f"- torch {torch.__version__}, CUDA {torch.version.cuda}" in text
    assert "- card: none visible to torch" in text and "- driver: " in text
    # The CUDA tests of the op files and of the end-to-end file are selected (and only collected).
    m = re.search(r"- pytest: (\d+)/(\d+) tests collected", text)
    assert m and 60 <= int(m.group(1)) < int(m.group(2)), text
    for part in (
        "build for the card",
        "op tests on CUDA",
        "CUDA end-to-end sampling and CUDA-graph replay",
        "op benchmark table",
        "--full (the rest of the suite)",
    ):
        line = f"- SKIPPED {part}: no GPU"
        assert line in text and f"gpu_check: {line}" in r.stdout, part
    assert "CUDA parts skipped" in text.splitlines()[-1]


def test_rejects_unknown_arguments(tmp_path):
    r = run(tmp_path, "--fast")
    assert r.returncode == 2 and "usage: bash benchmarks/gpu_check.sh [--full]" in r.stderr
    assert not list(tmp_path.glob("gpu_check-*.md"))
