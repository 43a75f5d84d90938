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


def _device_isa_params():
    have = edlm.ops.cpu_capabilities()
    cpu = [
        pytest.param(
            ("cpu", isa),
            marks=pytest.mark.skipif(isa not in have, reason=f"CPU lacks {isa}"),
            id=f"cpu-{isa}",
        )
        for isa in ("default", "avx2", "avx512")
    ]
    return [*cpu, pytest.param(("cuda", None), marks=DEVICES[1].marks, id="cuda")]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=_device_isa_params())
def device_isa(request, monkeypatch):
    """The device for tests of the kernels' instruction sets too: the CPU once per instruction
    set of its kernels (EDLM_CPU_CAPABILITY), CUDA once (instruction sets are the CPU's)."""
    device, isa = request.param
    if isa is not None:
        monkeypatch.setenv("EDLM_CPU_CAPABILITY", isa)
        assert edlm.ops.cpu_capability() == isa
    return device
