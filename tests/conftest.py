"""Shared fixtures: devices to run op tests on, and the CPU instruction sets to cover.

Tests import the installed edlm (with its compiled edlm._C); CUDA cases skip without a GPU.
"""

import os

import pytest
import torch

import edlm

HAS_CUDA = torch.cuda.is_available() and edlm._C.has_cuda()

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


def chi_square_bound(df: int, sigmas: float = 6.0) -> float:
    """A bound a chi-square statistic with `df` degrees of freedom exceeds with negligible chance.

    Normal approximation of the chi-square: mean df, variance 2 df.
    """
    return df + sigmas * (2.0 * df) ** 0.5


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple:
    """Pearson's statistic of observed `counts` against `probs`, pooling cells expected < 5.

    Returns (statistic, degrees of freedom); the statistic is inf when an outcome of
    probability 0 was observed.
    """
    counts = counts.double()
    n = counts.sum()
    expected = probs.double() * n
    if counts[probs == 0].sum() > 0:
        return float("inf"), int((probs > 0).sum().item()) - 1
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum().item()
    return stat, int(keep.sum().item()) - 1
