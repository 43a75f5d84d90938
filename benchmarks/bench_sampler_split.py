"""Where `edlm.sample`'s wall time goes: network (denoiser) forwards, energy forwards (the AR
model and its sequence_logprob), the fused ops the sampler calls itself (masked_sample,
sequence_logprob for tempered proposals, importance_resample) and everything else (the Python
loop, gathers, masks, allocation). MDLM and EDLM (k = 2, 4; window 0.2, 1) with the tiny char
models at B = 32, and with a `small`-shaped model at the GPT-2 vocabulary (random weights: speed
does not depend on them). Each configuration's samples are checked equal to an untimed run."""

import dataclasses
import time

import pytest
import torch

import edlm
from edlm import sampling
from edlm.checkpoint import bundled, load_energy, load_model
from edlm.config import preset
from edlm.models import AREnergy, ARModel, Denoiser

pytestmark = pytest.mark.slow  # full-size sampling runs


class Clock:
    def __init__(self):
        self.spent = {"network": 0.0, "energy": 0.0, "ops": 0.0}

    def timed(self, part, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.is_cuda:
                torch.cuda.synchronize()
            self.spent[part] += time.perf_counter() - t0
            return out

        return call


class TimedOps:
    """Stands in for edlm.ops inside edlm.sampling only (the energies keep the real module, so
    their own op calls count as energy time)."""

    def __init__(self, clock):
        for name in ("masked_sample", "sequence_logprob", "importance_resample"):
            setattr(self, name, clock.timed("ops", getattr(edlm.ops, name)))


def split(benchmark, denoiser, energy, k, window, batch, length, steps, monkeypatch, seed=0):
    """One timed run (through `benchmark`, so that --benchmark-only runs it) split by parts."""
    clock = Clock()
    monkeypatch.setattr(sampling, "ops", TimedOps(clock))
    kwargs = dict(batch_size=batch, length=length, mask_id=denoiser.mask_id, steps=steps)
    kwargs.update(num_candidates=k, window=window)
    out = []

    def run():
        t0 = time.perf_counter()
        x = edlm.sample(
            clock.timed("network", denoiser),
            energy=clock.timed("energy", energy) if k > 1 else None,
            generator=torch.Generator().manual_seed(seed),
            device="cpu",
            **kwargs,
        )
        out.append((x, time.perf_counter() - t0))

    benchmark.pedantic(run, rounds=1, iterations=1)
    monkeypatch.undo()
    ((x, wall),) = out
    plain = edlm.sample(
        denoiser,
        energy=energy if k > 1 else None,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    assert torch.equal(x, plain)  # timing changes nothing
    other = wall - sum(clock.spent.values())
    shares = {p: v / wall for p, v in clock.spent.items()} | {"other": other / wall}
    return wall, shares


CONFIGS = [(1, 1.0), (2, 0.2), (4, 0.2), (2, 1.0), (4, 1.0)]
IDS = ["mdlm", "edlm-k2-w0.2", "edlm-k4-w0.2", "edlm-k2-w1", "edlm-k4-w1"]


@pytest.fixture(scope="module")
def tiny():
    den, cfg = load_model(bundled("denoiser-tiny"), kind="denoiser")
    spec = dict(mask_id=den.mask_id, vocab_size=cfg.model_config.vocab_size)
    return den, load_energy(f"ar:{bundled('ar-tiny')}", **spec), cfg.model_config.length


@pytest.fixture(scope="module")
def small():
    cfg = dataclasses.replace(preset("small"), vocab_size=50258, length=128, mask_id=50257)
    torch.manual_seed(0)
    return Denoiser(cfg).eval(), AREnergy(ARModel(cfg).eval(), cfg.mask_id), cfg.length


def _record(table, group, label, wall, shares):
    table.record(group, label, wall, " / ".join(f"{p} {100 * v:.1f}%" for p, v in shares.items()))


@pytest.mark.parametrize("k,window", CONFIGS, ids=IDS)
def test_split_tiny(benchmark, table, tiny, k, window, monkeypatch):
    den, energy, L = tiny
    wall, shares = split(benchmark, den, energy, k, window, 32, L, 32, monkeypatch)
    _record(
        table, "sample split tiny B=32 L=256 T=32", IDS[CONFIGS.index((k, window))], wall, shares
    )


@pytest.mark.parametrize("k,window", [(1, 1.0), (2, 1.0)], ids=["mdlm", "edlm-k2-w1"])
def test_split_small_gpt2_vocab(benchmark, table, small, k, window, monkeypatch):
    den, energy, L = small
    wall, shares = split(benchmark, den, energy, k, window, 2, L, 4, monkeypatch)
    _record(
        table,
        "sample split small V=50258 B=2 L=128 T=4",
        f"{'mdlm' if k == 1 else 'edlm-k2-w1'}",
        wall,
        shares,
    )
