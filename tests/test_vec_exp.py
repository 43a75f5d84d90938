"""The CPU kernels' exponential (`edlm::_vec_exp`, the exp_fast of csrc/kernels/vec_common.h that
masked_sample and sequence_logprob inline) against fp64: within 2 ulp over the range the kernels
use, exactly 0 below the flush point, and the same edges on every instruction set."""

import math

import numpy as np
import pytest
import torch

import edlm

FLUSH = -86.0
TOP = 88.7


@pytest.fixture(params=["default", "avx2", "avx512"])
def isa(request, monkeypatch):
    if request.param not in edlm.ops.cpu_capabilities():
        pytest.skip(f"this CPU has no {request.param}")
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", request.param)
    assert edlm.ops.cpu_capability() == request.param
    return request.param


def vec_exp(x):
    return torch.ops.edlm._vec_exp(x)


def ulp_error(x):
    """|exp_fast(x) - exp(x)| in units of the float32 spacing at the exact value."""
    got = vec_exp(x).double().numpy()
    exact = np.exp(x.double().numpy())
    spacing = np.spacing(exact.astype(np.float32)).astype(np.float64)
    return np.abs(got - exact) / spacing


def around(c, count=1 << 13):
    """Every float32 within `count` steps of float32(c) (c != 0), by consecutive bit patterns."""
    bits = np.array([c], dtype=np.float32).view(np.int32)[0]
    return torch.from_numpy((bits + np.arange(-count, count, dtype=np.int32)).view(np.float32))


def dense_sweep():
    """4M evenly spaced floats over [FLUSH, TOP], plus every float next to the ends of the
    polynomial's interval ((n + 1/2) ln2, where the reduction switches n), next to the flush point
    and to 0."""
    parts = [torch.linspace(FLUSH, TOP, 1 << 22, dtype=torch.float64).float()]
    parts += [
        around((n + 0.5) * math.log(2)) for n in (-124, -100, -20, -2, -1, 0, 1, 20, 100, 127)
    ]
    parts += [around(FLUSH), around(1e-6), around(-1e-6), torch.linspace(-1e-3, 1e-3, 1 << 14)]
    return torch.cat(parts)


def test_accuracy_within_2_ulp(isa):
    x = dense_sweep()
    x = x[(x >= FLUSH) & (x <= TOP)]
    err = ulp_error(x)
    worst = int(np.argmax(err))
    assert err.max() <= 2.0, f"{isa}: {err.max():.2f} ulp at x = {x[worst].item()!r}"
    # And not merely within 2 ulp: most values are correctly rounded or one off.
    assert np.mean(err <= 1.0) > 0.99


def test_edges(isa):
    below = torch.tensor([float("-inf"), -1e30, -87.5, -86.0001, FLUSH - 2**-17 * 86])
    assert torch.equal(vec_exp(below), torch.zeros_like(below))
    above = torch.tensor([88.73, 88.8, 100.0, 1e30, float("inf")])
    assert torch.equal(vec_exp(above), torch.full_like(above, float("inf")))
    assert vec_exp(torch.tensor([0.0])).item() == 1.0
    assert vec_exp(torch.tensor([FLUSH])).item() == pytest.approx(math.exp(FLUSH), rel=3e-7)


def test_every_lane_and_tail(isa):
    # Lengths that are not multiples of the vector width: the tail takes the same path.
    for n in (1, 7, 8, 9, 15, 16, 17, 31, 33):
        x = torch.linspace(-5, 5, n)
        torch.testing.assert_close(vec_exp(x), torch.exp(x.double()).float(), rtol=3e-7, atol=0)


def test_isas_agree_to_2_ulp(monkeypatch):
    if "avx2" not in edlm.ops.cpu_capabilities():
        pytest.skip("this CPU has no AVX2")
    x = torch.linspace(FLUSH, 60.0, 100_003)
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", "default")
    a = vec_exp(x).double()
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", "avx2")
    b = vec_exp(x).double()
    spacing = torch.from_numpy(np.spacing(a.float().numpy()).astype(np.float64))
    assert ((a - b).abs() / spacing).max() <= 3.0


def test_avx512_is_the_avx2_exponential_bit_for_bit(monkeypatch):
    """The AVX-512 exp is AVX2's instruction sequence on 16 lanes: the same bits everywhere,
    the flush, the clamp, infinities and NaN included."""
    if "avx512" not in edlm.ops.cpu_capabilities():
        pytest.skip("this CPU has no AVX-512")
    x = torch.cat([torch.linspace(-100.0, 100.0, 200_003), torch.randn(10_001) * 30])
    x[::97] = float("nan")
    x[1::101] = float("inf")
    x[2::103] = float("-inf")
    out = {}
    for isa in ("avx2", "avx512"):
        monkeypatch.setenv("EDLM_CPU_CAPABILITY", isa)
        out[isa] = vec_exp(x)
    assert torch.equal(out["avx2"].view(torch.int32), out["avx512"].view(torch.int32))


def test_bad_input():
    with pytest.raises(RuntimeError, match="_vec_exp: expected float32"):
        vec_exp(torch.zeros(3, dtype=torch.float64))
