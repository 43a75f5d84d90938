"""Benchmark of edlm.ops.importance_resample against the eager composite (softmax, ESS and
torch.multinomial), at B = 16384 rows of K = 16 candidates, 4 draws per row."""

import pytest
import torch

from edlm import ops, reference

B, K, S = 16384, 16, 4
GROUP = f"importance_resample B={B} K={K} S={S}"


def eager(log_w):
    w = log_w.softmax(-1)
    return torch.multinomial(w, S, replacement=True), 1.0 / (w * w).sum(-1)


@pytest.fixture(scope="module")
def log_w():
    return torch.randn(B, K, generator=torch.Generator().manual_seed(0)) * 3


def test_eager_composite(benchmark, table, log_w):
    index, _ess = eager(log_w)
    assert index.shape == (B, S)
    table.add(benchmark, GROUP, "eager softmax+multinomial", lambda: eager(log_w), baseline=True)


def test_fused(benchmark, table, log_w):
    index, ess = ops.importance_resample(log_w, num_samples=S)
    torch.testing.assert_close(ess, reference.importance_resample(log_w)[1], rtol=1e-6, atol=0)
    # Pooled over rows, the draws' mean weight matches the expected one.
    w = log_w.double().softmax(-1)
    drawn = w.gather(1, index).mean().item()
    expected = (w * w).sum(-1).mean().item()
    assert abs(drawn - expected) < 0.01
    table.add(
        benchmark,
        GROUP,
        "edlm.ops.importance_resample",
        lambda: ops.importance_resample(log_w, num_samples=S),
    )
