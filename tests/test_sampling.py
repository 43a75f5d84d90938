"""Tests of edlm.sample on an exact toy (V = 3 real tokens, L = 4: 81 sequences), where the
proposal, the EDLM target mu * exp(-E) / Z and the AR conditional can be enumerated: MDLM draws
match the proposal, importance sampling moves towards the target as k grows and away from it with
the sign flipped, rows keep their own candidates, the window is honoured, prompts are kept."""

import pytest
import torch
from statcheck import chi_square, chi_square_bound
from toy import ENERGY, MASK, SEQS, L, ToyAR, ToyDenoiser, V, seq_id

import edlm
from edlm.models import AREnergy


def table_energy(sign=1.0):
    def energy(x0, xt, t, proposal_logp):
        return sign * ENERGY[seq_id(x0)]

    return energy


def empirical(x):
    return torch.bincount(seq_id(x), minlength=81).double()


def tv(counts, probs):
    return 0.5 * (counts / counts.sum() - probs).abs().sum().item()


def draw(n, seed, **kw):
    kw.setdefault("steps", 1)
    return edlm.sample(
        ToyDenoiser(),
        batch_size=n,
        length=L,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def test_one_step_mdlm_matches_factorized_proposal():
    proposal = ToyDenoiser().proposal(torch.full((L,), MASK))
    for kw in ({}, {"energy": table_energy(), "num_candidates": 1}):
        counts = empirical(draw(20000, 0, **kw))
        stat, df = chi_square(counts, proposal)
        assert stat < chi_square_bound(df), stat
        assert chi_square(counts, torch.full((81,), 1 / 81))[0] > chi_square_bound(df)


def test_importance_sampling_converges_to_the_target_and_sign_matters():
    proposal = ToyDenoiser().proposal(torch.full((L,), MASK))
    target = proposal * torch.exp(-ENERGY.double())
    target = target / target.sum()
    assert 0.5 * (proposal - target).abs().sum() > 0.2  # the energy matters
    n = 20000
    dist = {
        k: tv(empirical(draw(n, k, energy=table_energy(), num_candidates=k)), target)
        for k in (1, 4, 32)
    }
    assert dist[1] > dist[4] > dist[32]
    assert dist[32] < 0.03, dist
    counts = empirical(draw(n, 7, energy=table_energy(), num_candidates=64))
    stat, df = chi_square(counts, target)
    assert stat < 2 * chi_square_bound(df)  # SIR with k = 64 leaves an O(1/k) bias
    flipped = tv(empirical(draw(n, 3, energy=table_energy(-1.0), num_candidates=32)), target)
    assert flipped > dist[1] + 0.1  # lower energy must mean more likely


def test_rows_keep_their_own_candidates():
    # Rows with different prompts have different targets; mixing candidates across rows (the
    # public code's .repeat/.view mix-up) would break prompts and distributions.
    n = 6000
    prompt = torch.full((2 * n, L), MASK)
    prompt[:n, 0] = 0
    prompt[n:, 0] = 2
    prompt[:n, 2] = 1
    out = edlm.sample(
        ToyDenoiser(),
        batch_size=2 * n,
        length=L,
        mask_id=MASK,
        steps=1,
        prompt=prompt,
        energy=table_energy(),
        num_candidates=128,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.all(out[:n, 0] == 0) and torch.all(out[n:, 0] == 2) and torch.all(out[:n, 2] == 1)
    for rows, p in ((slice(0, n), prompt[0]), (slice(n, 2 * n), prompt[n])):
        consistent = ((p == SEQS) | (p == MASK)).all(-1)
        target = ToyDenoiser().proposal(p) * torch.exp(-ENERGY.double()) * consistent
        target = target / target.sum()
        assert tv(empirical(out[rows]), target) < 0.05


def test_window_runs_is_exactly_where_t_is_above_one_minus_window():
    seen = []

    def energy(x0, xt, t, proposal_logp):
        seen.append(float(t[0]))
        return ENERGY[seq_id(x0)]

    steps, window = 10, 0.35
    _x, stats = edlm.sample(
        ToyDenoiser(),
        batch_size=64,
        length=L,
        mask_id=MASK,
        steps=steps,
        energy=energy,
        num_candidates=4,
        window=window,
        generator=torch.Generator().manual_seed(0),
        return_stats=True,
    )
    grid = edlm.schedule.sampling_grid(steps)
    assert seen and all(t > 1 - window for t in seen)
    assert stats["is_steps"] == len(seen) == stats["energy_calls"]
    assert (
        stats["ess"].shape == (len(seen), 64)
        and torch.all(stats["ess"] >= 1)
        and torch.all(stats["ess"] <= 4)
    )
    # Every step above the threshold that revealed something ran IS (with 64 x 4 positions all do).
    expected = [float(grid[i]) for i in range(steps) if float(grid[i]) > 1 - window]
    assert seen == pytest.approx(expected)


def test_window_zero_is_plain_mdlm_for_the_same_seed():
    kw = dict(batch_size=50, length=L, mask_id=MASK, steps=8)
    a = edlm.sample(ToyDenoiser(), generator=torch.Generator().manual_seed(3), **kw)
    b = edlm.sample(
        ToyDenoiser(),
        generator=torch.Generator().manual_seed(3),
        energy=table_energy(),
        num_candidates=4,
        window=0.0,
        **kw,
    )
    assert torch.equal(a, b)


def test_determinism_and_prompt_preservation():
    prompt = torch.full((3, 6), MASK)
    prompt[:, 1] = 2
    prompt[1, 4] = 0
    kw = dict(
        batch_size=3,
        length=6,
        mask_id=MASK,
        steps=5,
        prompt=prompt,
        energy=table6,
        num_candidates=3,
    )
    a = edlm.sample(ToyDenoiser6(), generator=torch.Generator().manual_seed(9), **kw)
    b = edlm.sample(ToyDenoiser6(), generator=torch.Generator().manual_seed(9), **kw)
    assert torch.equal(a, b)
    assert torch.all(a[:, 1] == 2) and a[1, 4] == 0 and torch.all(a != MASK)


class ToyDenoiser6(ToyDenoiser):
    def __call__(self, xt, t):
        B, n = xt.shape
        logits = torch.zeros(B, n, V + 1)
        logits[..., MASK] = float("-inf")
        out = logits.log_softmax(-1)
        carry = torch.full_like(out, float("-inf")).scatter_(-1, xt[..., None], 0.0)
        return torch.where((xt != MASK)[..., None], carry, out)


def table6(x0, xt, t, proposal_logp):
    return x0.float().sum(-1)


def test_cache_skips_steps_that_reveal_nothing():
    den = ToyDenoiser()
    x, stats = edlm.sample(
        den,
        batch_size=1,
        length=L,
        mask_id=MASK,
        steps=1000,
        return_stats=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["network_calls"] == den.calls <= L + 1  # at most one call per revealed position
    assert torch.all(x != MASK)


def test_final_noise_removal_fills_every_mask():
    # With 1 step and t_end = 1e-5 nearly all positions reveal; force leftovers with many rows.
    x = draw(200_000, 11)
    assert torch.all(x != MASK)


def test_bad_arguments():
    den = ToyDenoiser()
    with pytest.raises(ValueError, match="sample: steps must be >= 1, got 0"):
        edlm.sample(den, batch_size=1, length=L, mask_id=MASK, steps=0)
    with pytest.raises(ValueError, match="sample: window must be in \\[0, 1\\], got 1.5"):
        edlm.sample(den, batch_size=1, length=L, mask_id=MASK, window=1.5)
    with pytest.raises(ValueError, match="sample: num_candidates must be >= 1, got 0"):
        edlm.sample(den, batch_size=1, length=L, mask_id=MASK, num_candidates=0)
    with pytest.raises(ValueError, match="sample: energy_temperature must be > 0"):
        edlm.sample(den, batch_size=1, length=L, mask_id=MASK, energy_temperature=0.0)
    with pytest.raises(ValueError, match=r"sample: prompt must be int64 \[2, 4\]"):
        edlm.sample(
            den, batch_size=2, length=L, mask_id=MASK, prompt=torch.zeros(2, 5, dtype=torch.long)
        )


# ---------------------------------------------------------------- the AR energy


def test_ar_energy_equals_its_definition():
    ar = ToyAR()
    xt = torch.tensor([[MASK, 1, MASK, MASK]]).expand(81, L)
    lp = torch.randn(81)
    cond = ar.log_cond(SEQS).float()
    masked = (xt == MASK).float()
    e = AREnergy(ar, MASK)(SEQS, xt, torch.ones(81), lp)
    torch.testing.assert_close(e, -(cond * masked).sum(-1) + lp)
    e_full = AREnergy(ar, MASK, carry_over=False)(SEQS, xt, torch.ones(81), lp)
    torch.testing.assert_close(e_full, -cond.sum(-1) + lp)


def test_carry_over_ar_target_is_the_ar_conditional_with_z_one():
    ar, den = ToyAR(), ToyDenoiser()
    p = torch.tensor([MASK, 1, MASK, MASK])
    consistent = ((p == SEQS) | (p == MASK)).all(-1)
    mu = den.proposal(p)  # [81], zero off the consistent set
    logmu = torch.where(consistent, mu.log(), torch.zeros(()))
    xt = p.expand(81, L)
    e = AREnergy(ar, MASK)(SEQS, xt, torch.ones(81), logmu.float()).double()
    weighted = torch.where(consistent, mu * torch.exp(-e), torch.zeros(()))
    assert weighted.sum().item() == pytest.approx(1.0, abs=1e-6)  # Z = 1 exactly
    ar_cond = (ar.log_cond(SEQS) * (p == MASK)).sum(-1).exp().double() * consistent
    torch.testing.assert_close(weighted, ar_cond, rtol=1e-5, atol=1e-8)
    # And the sampler, prompted with xt, draws from it: the proposal is far from it (TV 0.7),
    # so importance sampling needs many candidates to get close.
    n = 5000
    dist = {}
    for k in (1, 512):
        out = edlm.sample(
            den,
            batch_size=n,
            length=L,
            mask_id=MASK,
            steps=1,
            prompt=p.expand(n, L).clone(),
            energy=AREnergy(ar, MASK),
            num_candidates=k,
            generator=torch.Generator().manual_seed(2),
        )
        dist[k] = tv(empirical(out), ar_cond)
    assert dist[1] > 0.6 and dist[512] < 0.06, dist
