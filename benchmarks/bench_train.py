"""Training throughput of the `tiny` denoiser and AR model (tokens per second of one optimizer step
at batch 8 x 256 characters), checked first: the step lowers the loss on its own batch."""

import dataclasses

import pytest
import torch

from edlm import schedule
from edlm.config import preset
from edlm.models import ARModel, Denoiser

pytestmark = pytest.mark.slow  # training steps of the tiny models at full size

B = 8
CFG = dataclasses.replace(preset("tiny"), vocab_size=28, length=256)  # the Austen characters
L = CFG.length
GROUP = f"train step tiny B={B} L={L}"


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.mask_id, (B, L), generator=g)
    t = schedule.antithetic_times(0.3, torch.arange(B), B)
    return {"x": x, "t": t, "noise": torch.rand(B, L, generator=g)}


@pytest.mark.parametrize("kind", ["denoiser", "ar"])
def test_train_step(benchmark, table, kind):
    torch.manual_seed(0)
    model = (Denoiser if kind == "denoiser" else ARModel)(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch()

    def step():
        loss, _ = model.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    first = step()
    for _ in range(3):
        last = step()
    assert last < first  # the step optimizes
    seconds = []

    def timed():
        import time

        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)

    table.add(
        benchmark, GROUP, f"{kind} fwd+bwd+AdamW", timed, baseline=kind == "denoiser", rounds=5
    )
    if seconds:
        per = sorted(seconds)[len(seconds) // 2]
        table.rows[-1].note = f"{B * L / per:.0f} tokens/s"
