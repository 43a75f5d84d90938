"""Tests of the models: SUBS output, causality, the NELBO estimator against an exact computation,
the presets, and the model configs' checks."""

import dataclasses
import math

import pytest
import torch

from edlm import schedule
from edlm.config import ConfigError, ModelConfig, preset
from edlm.models import ARModel, Denoiser, build

SMALL = ModelConfig(vocab_size=6, length=8, dim=32, n_heads=2, n_layers=2, cond_dim=16, dropout=0.0)


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_denoiser_subs_output():
    model = randomize(Denoiser(SMALL)).eval()
    xt = torch.tensor([[5, 1, 5, 2, 0, 5, 5, 3]])
    logp = model(xt, torch.tensor([0.5]))
    assert logp.shape == (1, 8, 6)
    masked = xt == 5
    assert torch.all(logp[..., 5] == float("-inf"))  # the mask is never predicted
    torch.testing.assert_close(logp[masked].exp().sum(-1), torch.ones(int(masked.sum())))
    # Unmasked positions carry over with probability 1.
    carried = logp[~masked]
    assert torch.all(carried.gather(-1, xt[~masked][:, None]) == 0)
    assert torch.all(carried.exp().sum(-1) == 1)


def test_time_conditioning_switch():
    cond = randomize(Denoiser(ModelConfig(**{**SMALL.__dict__, "time_conditioning": True}))).eval()
    xt = torch.full((1, 8), 5)
    assert not torch.allclose(cond(xt, torch.tensor([0.2])), cond(xt, torch.tensor([0.9])))
    plain = randomize(Denoiser(SMALL)).eval()
    torch.testing.assert_close(plain(xt, torch.tensor([0.2])), plain(xt, torch.tensor([0.9])))


def test_ar_is_causal_and_scores_every_position():
    model = randomize(ARModel(SMALL)).eval()
    x = torch.randint(0, 5, (2, 8))
    logits = model(x)
    assert logits.shape == (2, 8, 6) and torch.all(logits[..., 5] == float("-inf"))
    y = x.clone()
    y[:, 5] = (x[:, 5] + 1) % 5
    changed = model(y)
    torch.testing.assert_close(logits[:, :6], changed[:, :6])  # positions <= 5 don't see x[5]
    assert not torch.allclose(logits[:, 6:], changed[:, 6:])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ar_generate_draws_from_the_model(temperature):
    """The empirical distribution of generated sequences (V = 3 real tokens, L = 3: 27 outcomes)
    fits exp(sum_l log softmax(logits / T)) of the model's own forward: a shifted context, a wrong
    temperature or a dropped position would not fit."""
    import itertools

    from statcheck import chi_square, chi_square_bound

    cfg = ModelConfig(
        vocab_size=4, length=3, dim=32, n_heads=2, n_layers=2, cond_dim=16, dropout=0.0
    )
    model = randomize(ARModel(cfg), seed=3).eval()
    all_x = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        logp = (model(all_x).double() / temperature).log_softmax(-1)
    probs = logp.gather(-1, all_x[..., None]).squeeze(-1).sum(-1).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-9)
    x = model.generate(20000, temperature=temperature, generator=torch.Generator().manual_seed(1))
    assert x.shape == (20000, 3) and x.max() < 3
    counts = torch.bincount(x[:, 0] * 9 + x[:, 1] * 3 + x[:, 2], minlength=27)
    stat, df = chi_square(counts, probs)
    assert stat < chi_square_bound(df), (stat, df)
    # the same generator state gives the same samples
    again = model.generate(
        20000, temperature=temperature, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(2, temperature=0.0)


def test_ar_draw_inverts_the_cdf_and_never_draws_a_zero_probability_token():
    """ARModel._draw: the first token whose cumulative mass exceeds u times the total, for u at
    each side of every boundary; u just below 1 (where u * total can round up to the total)
    and u = 0 still land on a token of positive probability."""
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]], dtype=torch.float64)
    logits = probs.log()
    cases = {0.0: 1, 0.2499: 1, 0.2501: 3, 0.7499: 3, 0.7501: 4, 1 - 2**-53: 4}
    for u, want in cases.items():
        got = ARModel._draw(logits, torch.tensor([[u]], dtype=torch.float64), 1.0)
        assert got.tolist() == [[want]], u
    # at a temperature, the CDF of softmax(logits / T): T = 0.5 squares the odds
    tempered = torch.tensor([[0.0, 1.0, 0.0, 4.0, 1.0, 0.0]]) / 6
    for u, want in {1 / 6 - 1e-9: 1, 1 / 6 + 1e-9: 3, 5 / 6 - 1e-9: 3, 5 / 6 + 1e-9: 4}.items():
        got = ARModel._draw(logits, torch.tensor([[u]], dtype=torch.float64), 0.5)
        assert got.tolist() == [[want]], (u, tempered)


def test_ar_kv_cache_matches_the_full_forward():
    """The KV-cached path gives the full forward's logits (one token at a time, and a block of
    positions at once through the causal mask), and generate draws the same tokens with and
    without the cache for the same seed (the bundled AR model, L = 256)."""
    from edlm.checkpoint import bundled, load_model
    from edlm.models.transformer import KVCache, rotary_cos_sin

    model, cfg = load_model(bundled("ar-tiny"), kind="ar")
    L, H, D = cfg.model_config.length, cfg.model_config.n_heads, cfg.model_config.dim
    x = torch.randint(0, 27, (3, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        inputs = torch.cat([torch.full((3, 1), model.mask_id), x[:, :-1]], dim=1)
        cos, sin = rotary_cos_sin(L, D // H, x.device)
        caches = [KVCache(3, H, L, D // H, torch.float32, x.device) for _ in model.blocks]
        first = model._step(inputs[:, :100], caches, 0, cos, sin)  # a block: the causal mask
        rest = [model._step(inputs[:, p : p + 1], caches, p, cos, sin) for p in range(100, L)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=1e-4, atol=1e-4)
    # The static-shape form (a tensor position, every cache slot attended, later ones masked):
    # what generate(compile=True) compiles, run eagerly here.
    caches = [KVCache(3, H, L, D // H, torch.float32, x.device) for _ in model.blocks]
    with torch.no_grad():
        static = [
            model._step(inputs[:, p : p + 1], caches, torch.tensor([p]), cos, sin) for p in range(L)
        ]
    torch.testing.assert_close(torch.cat(static, dim=1), full, rtol=1e-4, atol=1e-4)
    a = model.generate(4, generator=torch.Generator().manual_seed(5))
    b = model.generate(4, generator=torch.Generator().manual_seed(5), cache=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="past the cache"):
        caches[0].update(torch.zeros(3, H, 1, D // H), torch.zeros(3, H, 1, D // H), L)


def test_nelbo_estimator_matches_exact_integral():
    # A denoiser whose prediction depends on xt through its number of masks: the exact NELBO is
    # an integral over t of a sum over the 2^L masks, done here by quadrature; the training
    # loss (antithetic t, Bernoulli masks, 1/t weight) must agree with it on average.
    L, V = 3, 4  # 3 real tokens + mask
    cfg = ModelConfig(vocab_size=V, length=L, dim=8, n_heads=1, n_layers=1, cond_dim=8, dropout=0.0)
    table = torch.tensor(
        [[0.0, 1.0, 2.0, 0.0], [1.5, 0.0, -1.0, 0.0], [0.3, 0.2, 0.1, 0.0], [2.0, -2.0, 0.5, 0.0]]
    )

    class Toy(Denoiser):
        def raw_logits(self, xt, t):
            count = (xt == self.mask_id).sum(-1)  # [B]
            return table[count].unsqueeze(1).expand(xt.shape[0], L, V).clone()

    model = Toy(cfg)
    x0 = torch.tensor([2, 0, 1])
    logq = table.clone()
    logq[:, V - 1] = float("-inf")
    logq = logq.log_softmax(-1)  # [count, V]

    def exact_integrand(t):
        p = (1 - schedule.EPS) * t
        total = 0.0
        for bits in range(1 << L):
            masked = [(bits >> pos) & 1 for pos in range(L)]
            k = sum(masked)
            prob = p**k * (1 - p) ** (L - k)
            total += prob * sum(-logq[k, x0[pos]].item() for pos in range(L) if masked[pos])
        return total / t

    ts = torch.linspace(schedule.T_MIN, 1.0, 20001, dtype=torch.float64)
    vals = torch.tensor([exact_integrand(t.item()) for t in ts[::100]], dtype=torch.float64)
    exact = torch.trapezoid(vals, ts[::100]).item() / (1 - schedule.T_MIN) / L  # per token

    g = torch.Generator().manual_seed(0)
    B, rounds = 1024, 64
    means = []
    for r in range(rounds):
        u = torch.rand((), generator=g).item()
        t = schedule.antithetic_times(u, torch.arange(B), B)
        loss, _ = model.loss({"x": x0.expand(B, L), "t": t, "noise": torch.rand(B, L, generator=g)})
        means.append(loss.item())
    means = torch.tensor(means, dtype=torch.float64)
    estimate, stderr = means.mean().item(), means.std().item() / rounds**0.5
    assert stderr < 0.01 * exact  # precise enough that a wrong weight or mask rate fails
    assert abs(estimate - exact) < 4 * stderr, (estimate, exact, stderr)


def test_antithetic_times_cover_the_interval():
    t = schedule.antithetic_times(0.3, torch.arange(8), 8)
    assert torch.all((t >= schedule.T_MIN) & (t <= 1))
    gaps = t.sort().values.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, (1 - schedule.T_MIN) / 8))


def test_presets():
    tiny, small = preset("tiny"), preset("small")
    assert (small.n_layers, small.dim, small.n_heads, small.vocab_size, small.length) == (
        12,
        768,
        12,
        0,
        0,
    )
    n = sum(
        p.numel()
        for p in Denoiser(dataclasses.replace(tiny, vocab_size=28, length=256)).parameters()
    )
    assert n < 5e6
    assert math.isclose(
        schedule.mask_prob(torch.tensor(1.0)).item(), 1 - schedule.EPS, rel_tol=1e-6
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dim": -5}, r"model.dim must be >= 1, got -5"),
        ({"n_layers": 0}, r"model.n_layers must be >= 1"),
        (
            {"dim": 30, "n_heads": 4},
            r"model.dim \(30\) must be a multiple of 2 \* model.n_heads \(4\)",
        ),
        ({"vocab_size": 0}, r"model.vocab_size must be >= 1, got 0 \(it comes from the data"),
        ({"mask_id": 28}, r"model.mask_id must be in \[0, 28\), got 28"),
        ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\)"),
    ],
)
def test_build_refuses_configs_no_model_fits(change, message):
    cfg = dataclasses.replace(ModelConfig(vocab_size=28, length=16), **change)
    with pytest.raises(ConfigError, match=message):
        build("denoiser", cfg)


def test_mask_id_is_stored_not_derived():
    assert ModelConfig(vocab_size=28).mask_id == 27  # unset: the last id
    cfg = ModelConfig(vocab_size=30, length=8, mask_id=3, dim=16, n_heads=2, n_layers=1, cond_dim=8)
    den = build("denoiser", cfg).eval()
    assert den.mask_id == 3 and build("ar", cfg).mask_id == 3
    xt = torch.tensor([[3, 3, 5, 29, 3, 0, 1, 3]])
    logp = den(xt, torch.ones(1))
    assert torch.all(logp[0, [0, 1, 4, 7], 3] == float("-inf"))  # the mask is never predicted
    assert torch.all(logp[0, [0, 1, 4, 7], 29] > float("-inf"))  # the last id is a real token
