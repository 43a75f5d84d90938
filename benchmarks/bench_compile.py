"""`--compile`: eager against torch.compile'd forwards (`edlm.models.compile_forwards`) of the
denoiser, the AR model and the NCE energy, and end-to-end `edlm.sample` (MDLM, EDLM-AR k=2), for
the bundled `tiny` models and a `small`-shaped model at the GPT-2 vocabulary (random weights:
speed does not depend on them); also each region's first call, which compiles. Checked first:
compiled forwards match eager to float rounding and compiled sampling draws eager's tokens."""

import copy
import dataclasses
import time

import pytest
import torch

import edlm
from edlm.checkpoint import bundled, load_model
from edlm.config import preset
from edlm.models import AREnergy, ARModel, Denoiser, EnergyModel, compile_forwards

pytestmark = pytest.mark.slow  # compiles a dozen graphs (minutes on a small CPU)

K = 2  # EDLM candidates: the energies run on B * K rows
SHAPES = {"tiny": dict(B=8, steps=16), "small": dict(B=2, steps=4)}


def _small():
    cfg = dataclasses.replace(preset("small"), vocab_size=50258, length=128, mask_id=50257)
    torch.manual_seed(0)
    models = [Denoiser(cfg), ARModel(cfg), EnergyModel(cfg)]
    for m in models:  # no zero-initialized layers: the outputs depend on the inputs
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.02)
    return [m.eval() for m in models]


def _tiny():
    return [
        load_model(bundled(f"{kind}-tiny"), kind=kind)[0].eval() for kind in ("denoiser", "ar")
    ] + [load_model(bundled("energy-tiny"), kind="energy")[0].eval()]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _paired(eager, compiled, rounds):
    """The median over interleaved rounds of eager time / compiled time: the two calls of a round
    see the same load, so the ratio holds up on a shared machine where the medians wander."""
    ratios = [_timed(eager)[1] / _timed(compiled)[1] for _ in range(rounds)]
    return sorted(ratios)[len(ratios) // 2]


@pytest.fixture(scope="module", params=sorted(SHAPES))
def setup(request, table):
    """(name, shape, inputs, eager and compiled callables per region); records the first calls."""
    name = request.param
    den, ar, nce = _small() if name == "small" else _tiny()
    B, L, mask_id = SHAPES[name]["B"], den.cfg.length, den.mask_id
    g = torch.Generator().manual_seed(0)
    xt = torch.randint(0, mask_id, (B, L), generator=g)
    xt[torch.rand(B, L, generator=g) < 0.5] = mask_id
    x0 = torch.randint(0, mask_id, (B * K, L), generator=g)
    xk, t = xt.repeat_interleave(K, 0), torch.rand(B, generator=g)
    energy = AREnergy(ar, mask_id)
    compiled = [compile_forwards(copy.deepcopy(m)) for m in (den, ar, nce)]
    cenergy = AREnergy(compiled[1], mask_id)
    regions = {  # region -> (eager call, compiled call)
        "denoiser": (lambda: den(xt, t), lambda: compiled[0](xt, t)),
        "ar": (lambda: ar(x0), lambda: compiled[1](x0)),
        "energy": (
            lambda: nce(x0, xk, t.repeat_interleave(K)),
            lambda: compiled[2](x0, xk, t.repeat_interleave(K)),
        ),
    }
    group = f"compile {name}: first call"
    with torch.no_grad():
        for region, (eager, comp) in regions.items():
            want, eager_s = _timed(eager)
            got, first_s = _timed(comp)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            note = f"eager call {eager_s * 1e3:.0f} ms"
            table.record(group, f"{region} forward (compiles)", first_s, note)
    compile_forwards(cenergy)  # AR forward + sequence_logprob: compiled at its first IS step
    samplers = {"eager": (den, energy), "compiled": (compiled[0], cenergy)}
    return name, dict(B=B, L=L, mask_id=mask_id, steps=SHAPES[name]["steps"]), regions, samplers


@pytest.mark.parametrize("variant", ["eager", "compiled"])
@pytest.mark.parametrize("region", ["denoiser", "ar", "energy"])
def test_forward(benchmark, table, setup, region, variant):
    name, shape, regions, _ = setup
    rows = shape["B"] * (1 if region == "denoiser" else K)
    fn = regions[region][variant == "compiled"]

    def call():
        with torch.no_grad():
            return fn()

    group = f"compile {name}: {region} forward N={rows} L={shape['L']}"
    table.add(benchmark, group, variant, call, baseline=variant == "eager", rounds=5)
    if variant == "compiled":
        with torch.no_grad():
            ratio = _paired(*regions[region], rounds=7)
        table.rows[-1].note = f"paired eager / compiled {ratio:.2f}x (7 interleaved rounds)"


def _sample(shape, den, energy, k, seed=0):
    return edlm.sample(
        den,
        batch_size=shape["B"],
        length=shape["L"],
        mask_id=shape["mask_id"],
        steps=shape["steps"],
        energy=energy if k > 1 else None,
        num_candidates=k,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("variant", ["eager", "compiled"])
@pytest.mark.parametrize("k", [1, K], ids=["mdlm", f"edlm-ar-k{K}"])
def test_sample(benchmark, table, setup, k, variant):
    name, shape, _, samplers = setup
    den, energy = samplers[variant]
    if variant == "compiled":  # checked against eager; for k > 1 this call compiles the energy
        (got, first_s) = _timed(lambda: _sample(shape, den, energy, k))
        assert torch.equal(got, _sample(shape, *samplers["eager"], k))
        if k > 1:
            table.record(
                f"compile {name}: first call",
                f"EDLM k={k} sample (compiles the AR energy)",
                first_s,
            )
    method = "MDLM" if k == 1 else f"EDLM-AR k={k}"
    group = f"compile {name}: {method} B={shape['B']} L={shape['L']} T={shape['steps']}"
    fn = lambda: _sample(shape, den, energy, k)
    table.add(benchmark, group, f"sample {variant}", fn, baseline=variant == "eager", rounds=3)
    if variant == "compiled":
        ratio = _paired(lambda: _sample(shape, *samplers["eager"], k), fn, rounds=3)
        table.rows[-1].note = f"paired eager / compiled {ratio:.2f}x (3 interleaved rounds)"
