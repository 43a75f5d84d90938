"""Shared fixtures: devices to run op tests on, and the CPU instruction sets to cover.

Tests import the installed edlm (with its compiled edlm._C); CUDA cases skip without a GPU.
"""

import atexit
import os
import shutil
import tempfile

import pytest
from devices import HAS_CUDA

import edlm

# torch.compile's FX-graph cache is keyed without our ops' schemas, so a cache written against an
# older build of edlm._C replays its graphs against the old schema. Each session gets its own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="edlm-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no GPU or no CUDA kernels built")
    ),
]


def _isa_params():
    params = ["default"]
    old = os.environ.pop("EDLM_CPU_CAPABILITY", None)
    try:
        native = edlm.ops.cpu_capability()
    finally:
        if old is not None:
            os.environ["EDLM_CPU_CAPABILITY"] = old
    params.append(
        pytest.param("avx2", marks=pytest.mark.skipif(native != "avx2", reason="CPU lacks AVX2"))
    )
    return params


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=_isa_params())
def isa(request, monkeypatch):
    """Runs a CPU test once per instruction set of the CPU kernels."""
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", request.param)
    assert edlm.ops.cpu_capability() == request.param
    return request.param
