"""Sampling throughput of MDLM and EDLM (k in {2, 4}, window in {0.2, 1.0}) with `tiny` models
(randomly initialized: speed does not depend on the weights) at B = 8, L = 256, 64 steps, and the
cost of an importance-sampling step over a plain one."""

import dataclasses

import pytest
import torch

import edlm
from edlm.config import preset
from edlm.models import AREnergy, ARModel, Denoiser

pytestmark = pytest.mark.slow  # the sampler at full size: about 2 minutes here

B, STEPS = 4, 16
CFG = dataclasses.replace(preset("tiny"), vocab_size=28, length=256)  # the Austen characters
L, MASK = CFG.length, CFG.mask_id
GROUP = f"sample tiny B={B} L={L} steps={STEPS}"
_MDLM = {}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return Denoiser(CFG).eval(), AREnergy(ARModel(CFG).eval(), MASK, carry_over=True)


def run(models, k, window, seed=0):
    denoiser, energy = models
    return edlm.sample(
        denoiser,
        batch_size=B,
        length=L,
        mask_id=MASK,
        steps=STEPS,
        energy=energy if k > 1 else None,
        num_candidates=k,
        window=window,
        generator=torch.Generator().manual_seed(seed),
        return_stats=True,
    )


@pytest.mark.parametrize(
    "k,window",
    [(1, 1.0), (2, 0.2), (4, 0.2), (2, 1.0), (4, 1.0)],
    ids=["mdlm", "edlm-k2-w0.2", "edlm-k4-w0.2", "edlm-k2-w1", "edlm-k4-w1"],
)
def test_sampling(benchmark, table, models, k, window):
    x, stats = run(models, k, window)
    assert x.shape == (B, L) and not torch.any(x == MASK)
    assert stats["is_steps"] == 0 if k == 1 else stats["is_steps"] > 0
    if k > 1:
        assert torch.all(stats["ess"] >= 1) and torch.all(stats["ess"] <= k)
    seconds = []

    def timed():
        seconds.append(run(models, k, window)[1]["seconds"])

    label = "MDLM" if k == 1 else f"EDLM-AR k={k} window={window}"
    note = f"calls={stats['network_calls']} is_steps={stats['is_steps']}"
    table.add(benchmark, GROUP, label, timed, baseline=k == 1, note=note, rounds=3)
    if seconds:
        per = sorted(seconds)[len(seconds) // 2]
        note += f" tok/s={B * L / per:.0f} s/sample={per / B:.3f}"
        if k == 1:
            _MDLM["per_call"] = per / stats["network_calls"]
        elif "per_call" in _MDLM and window == 1.0:
            plain = _MDLM["per_call"] * stats["network_calls"]
            note += f" IS-step overhead={(per - plain) / stats['is_steps'] * 1e3:.1f} ms"
        table.rows[-1].note = note
