"""Text longer than the model: `edlm.sample(length=1024)` with the bundled tiny char models
(context 256, stride 128: 7 blocks), MDLM and EDLM-AR k=2, in seconds per 1000 generated tokens.
Each run is checked first: the length, no mask left, the number of blocks and the same text for
the same seed (that each block's fixed prefix never changes is tests/test_generation_features.py's
part)."""

import pytest
import torch

import edlm
from edlm.checkpoint import bundled, load_energy, load_model

pytestmark = pytest.mark.slow  # seven sampler calls per run

B, LENGTH, STRIDE, STEPS = 4, 1024, 128, 32
GROUP = f"sample beyond the context: tiny B={B} length={LENGTH} stride={STRIDE} steps={STEPS}"


@pytest.fixture(scope="module")
def models():
    den, cfg = load_model(bundled("denoiser-tiny"), kind="denoiser")
    spec = dict(mask_id=den.mask_id, vocab_size=cfg.model_config.vocab_size)
    return den, load_energy(f"ar:{bundled('ar-tiny')}", **spec)


def run(models, k, seed=0):
    den, energy = models
    return edlm.sample(
        den,
        batch_size=B,
        length=LENGTH,
        mask_id=den.mask_id,
        steps=STEPS,
        stride=STRIDE,
        energy=energy if k > 1 else None,
        num_candidates=k,
        generator=torch.Generator().manual_seed(seed),
        return_stats=True,
    )


@pytest.mark.parametrize("k", [1, 2], ids=["mdlm", "edlm-ar-k2"])
def test_semi_autoregressive(benchmark, table, models, k):
    x, stats = run(models, k)
    assert x.shape == (B, LENGTH) and not torch.any(x == models[0].mask_id)
    assert stats["blocks"] == 1 + (LENGTH - models[0].cfg.length) // STRIDE
    assert torch.equal(run(models, k)[0], x)
    seconds = []

    def timed():
        seconds.append(run(models, k)[1]["seconds"])

    label = "MDLM" if k == 1 else "EDLM-AR k=2 window=1"
    table.add(benchmark, GROUP, label, timed, baseline=k == 1, rounds=1)
    if seconds:
        per = sorted(seconds)[len(seconds) // 2]
        table.rows[
            -1
        ].note = f"blocks={stats['blocks']} s/1000 tokens={per / (B * LENGTH) * 1000:.2f}"
