"""Benchmarks of the austen-oracle source (edlm.oracle): exact log p of 1024 sequences of 256
characters (the issue's floor: 256 k characters per second), against a per-row Python loop over
the transitions; and the exact denoiser's forward-backward over 64 such rows, fp64 and fp32, each
checked against single-row calls."""

import math

import pytest
import torch

from edlm.corpora import austen_oracle

N, L, ROWS = 1024, 256, 64
GROUP_LP = f"oracle log_prob N={N} L={L}"
GROUP_FB = f"oracle marginals B={ROWS} L={L}"


@pytest.fixture(scope="module")
def source():
    return austen_oracle()


@pytest.fixture(scope="module")
def x(source):
    return source.sample(N, L, generator=torch.Generator().manual_seed(0))


def loop_log_prob(source, x):
    out = []
    for row in x.tolist():
        lp = math.log(source.stationary[row[0], row[1]])
        for t in range(2, len(row)):
            lp += math.log(source.transition[row[t - 2], row[t - 1], row[t]])
        out.append(lp)
    return torch.tensor(out, dtype=torch.float64)


def test_loop_log_prob(benchmark, table, source, x):
    few = x[:16]
    table.add(
        benchmark,
        GROUP_LP,
        "Python loop, 16 rows (x64 for N)",
        lambda: loop_log_prob(source, few),
        baseline=True,
    )


def test_log_prob(benchmark, table, source, x):
    torch.testing.assert_close(
        source.log_prob(x[:16]), loop_log_prob(source, x[:16]), rtol=0, atol=1e-9
    )
    table.add(benchmark, GROUP_LP, "MarkovSource.log_prob", lambda: source.log_prob(x))


@pytest.fixture(scope="module")
def xt(source, x):
    gen = torch.Generator().manual_seed(1)
    return torch.where(torch.rand(ROWS, L, generator=gen) < 0.7, 27, x[:ROWS])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_marginals(benchmark, table, source, xt, dtype):
    got = source.marginals(xt, 27, dtype=dtype)
    for b in (0, ROWS - 1):  # batched rows equal single-row calls
        one = source.marginals(xt[b : b + 1], 27, dtype=torch.float64)[0]
        torch.testing.assert_close(
            got[b].double(), one, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5
        )
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        got.double().sum(-1), torch.ones(ROWS, L, dtype=torch.float64), rtol=0, atol=tol
    )
    table.add(
        benchmark,
        GROUP_FB,
        f"forward-backward {str(dtype).split('.')[-1]}",
        lambda: source.marginals(xt, 27, dtype=dtype),
        baseline=dtype == torch.float64,
    )
