"""Benchmark of ARModel.generate at L = 256 with the bundled tiny AR model, for one sample and for
a batch of 32: recomputing the whole prefix per token (cache=False, the code the cache replaced),
the static KV cache (one new token per step), and the cached step compiled with the weights
frozen in (compile=True; its first call, which compiles, is a row of its own). All three draw the
same tokens for the same seed, checked before timing."""

import time

import pytest
import torch

from edlm.checkpoint import bundled, load_model

MODES = {
    "recompute": dict(cache=False),
    "kv-cache": dict(cache=True, compile=False),
    "kv-cache-compiled": dict(cache=True, compile=True),
}
LABELS = {
    "recompute": "recompute the prefix",
    "kv-cache": "KV cache",
    "kv-cache-compiled": "KV cache, compiled step",
}


@pytest.fixture(scope="module")
def model():
    return load_model(bundled("ar-tiny"), kind="ar")[0]


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("mode", list(MODES))
def test_generate(benchmark, table, model, batch, mode):
    group = f"ARModel.generate B={batch} L={model.cfg.length}"

    def run(**kw):
        return model.generate(batch, generator=torch.Generator().manual_seed(0), **kw)

    start = time.perf_counter()
    got = run(**MODES[mode])  # for the compiled mode, the first call: it compiles
    first = time.perf_counter() - start
    if mode == "kv-cache-compiled":
        table.record(group, "compiled step, first call", first, note="compiles, then samples")
    want = run(**MODES["recompute" if mode != "recompute" else "kv-cache"])
    assert torch.equal(got, want) and got.shape == (batch, model.cfg.length)
    table.add(
        benchmark,
        group,
        LABELS[mode],
        lambda: run(**MODES[mode]),
        baseline=mode == "recompute",
        rounds=1 if mode == "recompute" else 3,
    )
