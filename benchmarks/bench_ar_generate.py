"""Benchmark of ARModel.generate at L = 256 with the bundled tiny AR model: the static KV cache
(one new token per step) against recomputing the whole prefix per token (cache=False, the code it
replaces), for one sample and for a batch of 32. Both draw the same tokens for the same seed."""

import pytest
import torch

from edlm.checkpoint import bundled, load_model


@pytest.fixture(scope="module")
def model():
    return load_model(bundled("ar-tiny"), kind="ar")[0]


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("cache", [False, True], ids=["recompute", "kv-cache"])
def test_generate(benchmark, table, model, batch, cache):
    a = model.generate(batch, generator=torch.Generator().manual_seed(0), cache=cache)
    b = model.generate(batch, generator=torch.Generator().manual_seed(0), cache=not cache)
    assert torch.equal(a, b) and a.shape == (batch, model.cfg.length)
    table.add(
        benchmark,
        f"ARModel.generate B={batch} L={model.cfg.length}",
        "KV cache" if cache else "recompute the prefix",
        lambda: model.generate(batch, generator=torch.Generator().manual_seed(0), cache=cache),
        baseline=not cache,
        rounds=1 if not cache else 3,
    )
