"""Tests of edlm.sample on an exact toy (V = 3 real tokens, L = 4: 81 sequences; and L = 5), where
the proposal, the EDLM target mu * exp(-E) / Z, the AR model and the sampler's whole law can be
enumerated (sampler_law.py): MDLM draws match the proposal, importance sampling moves towards the
target as k grows and away from it with the sign flipped, rows keep their own candidates, the
window is honoured, prompts are kept, the whole-sequence AR energy targets the AR model and the
carry-over one does not, a tempered proposal keeps the target, the stats are what they say, and
200k draws match the exact law of the sampler (chi-square) with and without importance sampling."""

import math

import pytest
import torch
from sampler_law import LengthToy, exact_law, seq_index
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
    # A generator of another device than the sampling: said up front, before any op is called.
    with pytest.raises(
        ValueError,
        match=r"sample: the generator is on cpu but sampling runs on cuda: pass "
        r"torch\.Generator\(device='cuda'\)",
    ):
        edlm.sample(
            den, batch_size=1, length=L, mask_id=MASK, device="cuda", generator=torch.Generator()
        )


# ---------------------------------------------------------------- the AR energy


def test_ar_energy_equals_its_definition():
    ar = ToyAR()
    xt = torch.tensor([[MASK, 1, MASK, MASK]]).expand(81, L)
    lp = torch.randn(81)
    cond = ar.log_cond(SEQS).float()
    masked = (xt == MASK).float()
    e_carry = AREnergy(ar, MASK, carry_over=True)(SEQS, xt, torch.ones(81), lp)
    torch.testing.assert_close(e_carry, -(cond * masked).sum(-1) + lp)
    e_full = AREnergy(ar, MASK, carry_over=False)(SEQS, xt, torch.ones(81), lp)
    torch.testing.assert_close(e_full, -cond.sum(-1) + lp)


def ar_joint():
    """p_AR over the 81 sequences, float64."""
    return (-ToyAR().nll(SEQS)).exp()


def tv_probs(p, q):
    return 0.5 * (p - q).abs().sum().item()


def test_ar_energy_targets_at_one_step():
    # Prompted with x_1 = 1: the whole-sequence energy's target mu exp(-E) / Z is the AR
    # conditional p_AR(x_0, x_2, x_3 | x_1 = 1); the carry-over one's is the product of the
    # masked positions' AR factors, normalized (Z = 1) but not the AR conditional, because it
    # drops the factor p_AR(x_1 = 1 | x_0) of the revealed token right of a masked one.
    ar, den = ToyAR(), ToyDenoiser()
    p = torch.tensor([MASK, 1, MASK, MASK])
    consistent = ((p == SEQS) | (p == MASK)).all(-1)
    mu = den.proposal(p)  # [81], zero off the consistent set
    logmu = torch.where(consistent, mu.log(), torch.zeros(()))
    xt = p.expand(81, L)

    def target(energy):
        e = energy(SEQS, xt, torch.ones(81), logmu.float()).double()
        return torch.where(consistent, mu * torch.exp(-e), torch.zeros(()))

    carry = target(AREnergy(ar, MASK, carry_over=True))
    assert carry.sum().item() == pytest.approx(1.0, abs=1e-6)  # Z = 1 exactly
    carry_factors = (ar.log_cond(SEQS) * (p == MASK)).sum(-1).exp().double() * consistent
    torch.testing.assert_close(carry, carry_factors, rtol=1e-5, atol=1e-8)
    full = target(AREnergy(ar, MASK, carry_over=False))
    ar_cond = ar_joint() * consistent
    z_full = full.sum().item()
    assert z_full == pytest.approx(ar_cond.sum().item(), rel=1e-5) and z_full < 0.99  # Z != 1
    ar_cond = ar_cond / ar_cond.sum()
    torch.testing.assert_close(full / full.sum(), ar_cond, rtol=1e-5, atol=1e-8)
    assert tv_probs(carry, ar_cond) > 0.1  # the carry-over target is not the AR conditional
    # The sampler, prompted with xt, draws from each: the proposal is far from them (TV 0.7), so
    # importance sampling needs many candidates to get close.
    n = 5000
    for carry_over, want in ((True, carry), (False, ar_cond)):
        dist = {}
        for k in (1, 512):
            out = edlm.sample(
                den,
                batch_size=n,
                length=L,
                mask_id=MASK,
                steps=1,
                prompt=p.expand(n, L).clone(),
                energy=AREnergy(ar, MASK, carry_over=carry_over),
                num_candidates=k,
                generator=torch.Generator().manual_seed(2),
            )
            dist[k] = tv(empirical(out), want)
        assert dist[1] > 0.6 and dist[512] < 0.06, (carry_over, dist)


def test_whole_sequence_ar_energy_targets_the_ar_model_and_carry_over_does_not():
    # The sampler's exact law with K -> infinity (each IS step draws from its target): with the
    # whole-sequence energy every step reveals from the AR conditional, so the T-step law is
    # p_AR (up to the positions left to the final step, 1e-5 each); with carry-over it is not.
    ar, den, p_ar = ToyAR(), ToyDenoiser(), ar_joint()
    dist = {}
    for steps in (1, 2, 3, 4):
        for carry_over in (True, False):
            law = exact_law(
                den,
                L,
                steps,
                energy=AREnergy(ar, MASK, carry_over=carry_over),
                num_candidates=math.inf,
            )
            dist[steps, carry_over] = tv_probs(law, p_ar)
    for steps in (1, 2, 3, 4):
        assert dist[steps, False] < 1e-4, dist
    assert dist[1, True] < 1e-4, dist  # from all-masked, one step: the masked factors are p_AR
    for steps in (2, 3, 4):
        assert 0.1 < dist[steps, True] < 0.3, dist


# ---------------------------------------------------------------- stats and the final step


def test_stats_report_ess_sd_log_w_and_energy_gain():
    # With a tiny energy temperature the resampling picks the lowest energy: the gain is then the
    # candidates' mean energy minus their minimum, and sd(log w) is sd(E) / T_is.
    seen = []

    def energy(x0, xt, t, proposal_logp):
        e = ENERGY[seq_id(x0)]
        seen.append(e.view(-1, 5))
        return e

    B, T_is = 300, 1e-5
    _x, stats = edlm.sample(
        ToyDenoiser(),
        batch_size=B,
        length=L,
        mask_id=MASK,
        steps=3,
        energy=energy,
        num_candidates=5,
        energy_temperature=T_is,
        generator=torch.Generator().manual_seed(4),
        return_stats=True,
    )
    e = torch.stack(seen)  # [IS steps, B, K]
    assert stats["is_steps"] == len(seen) > 1
    for name in ("ess", "sd_log_w", "energy_gain"):
        assert stats[name].shape == (len(seen), B) and stats[name].dtype == torch.float32
    torch.testing.assert_close(stats["sd_log_w"], e.std(-1, correction=0) / T_is, rtol=1e-4, atol=0)
    want_gain = e.mean(-1) - e.min(-1).values
    torch.testing.assert_close(stats["energy_gain"], want_gain, rtol=1e-5, atol=1e-5)
    assert (stats["energy_gain"] >= 0).all() and stats["energy_gain"][0].mean() > 0.5
    assert stats["ess"][0].mean() < 1.5  # near-degenerate weights (ESS 1 but for duplicates)
    # A constant energy: uniform weights, ESS = K, sd 0, gain 0; no IS: empty [0, B].
    _x, flat = edlm.sample(
        ToyDenoiser(),
        batch_size=7,
        length=L,
        mask_id=MASK,
        steps=2,
        energy=lambda x0, xt, t, lp: torch.zeros(x0.shape[0]),
        num_candidates=4,
        return_stats=True,
    )
    torch.testing.assert_close(flat["ess"], torch.full_like(flat["ess"], 4.0))
    assert torch.all(flat["sd_log_w"] == 0) and torch.all(flat["energy_gain"] == 0)
    _x, none = edlm.sample(ToyDenoiser(), batch_size=7, length=L, mask_id=MASK, return_stats=True)
    assert all(none[k].shape == (0, 7) for k in ("ess", "sd_log_w", "energy_gain"))


class FinalToy:
    """Token 1 at every step of the grid; at its last time (1e-5, the final step) the law
    (0.6, 0, 0.4): the positions left to the final step show which final ran."""

    mask_id = MASK

    def __call__(self, xt, t):
        B, n = xt.shape
        p = torch.tensor([0.6, 0.0, 0.4, 0.0]) if float(t[0]) < 1e-4 else torch.eye(4)[1]
        out = p.log().expand(B, n, V + 1).clone()
        carry = torch.full_like(out, float("-inf")).scatter_(-1, xt[..., None], 0.0)
        return torch.where((xt != MASK)[..., None], carry, out)


def test_final_argmax_or_sample():
    kw = dict(batch_size=20_000, length=97, mask_id=MASK, steps=1)
    runs = {
        final: edlm.sample(
            FinalToy(), generator=torch.Generator().manual_seed(6), final=final, **kw
        )
        for final in ("argmax", "sample")
    }
    default = edlm.sample(FinalToy(), generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(default, runs["argmax"])  # argmax stays the default
    # About 20k * 97 * 1e-5 = 19 positions reach the final step, in both runs the same ones.
    left = runs["argmax"] != 1
    assert 5 < int(left.sum()) < 60 and torch.equal(left, runs["sample"] != 1)
    assert torch.all(runs["argmax"][left] == 0)
    assert (runs["sample"][left] == 2).any() and torch.all(runs["sample"] != MASK)
    with pytest.raises(ValueError, match="sample: final must be one of argmax, sample, got 'max'"):
        edlm.sample(FinalToy(), final="max", **kw)


# ---------------------------------------------------------------- tempered proposals

TAU = 0.6


def full_ar():
    return AREnergy(ToyAR(), MASK, carry_over=False)


@pytest.mark.parametrize("which", ["table", "ar"])
def test_tempered_proposal_keeps_the_target(which):
    # tau = 0.6: the candidates come from q_tau, the weights add log mu - log q_tau, so the step's
    # target stays mu exp(-E) / Z (table energy; the AR energy: p_AR), exactly with K -> inf.
    den = ToyDenoiser()
    energy = table_energy() if which == "table" else full_ar()
    all_masked = torch.full((L,), MASK)
    mu = den.proposal(all_masked)
    want = mu * torch.exp(-ENERGY.double()) if which == "table" else ar_joint()
    want = want / want.sum()
    kw = dict(energy=energy, num_candidates=math.inf, temperature=TAU)
    right = exact_law(den, L, 1, **kw)
    wrong = exact_law(den, L, 1, corrected=False, **kw)  # no correction: q_tau exp(-E) / Z
    assert tv_probs(right, want) < 1e-4
    assert tv_probs(wrong, want) > 0.2, tv_probs(wrong, want)
    # And the sampler's draws at K = 2 (closed-form SIR law), over 2 steps, match the corrected
    # law and not the uncorrected one.
    kw.update(num_candidates=2)
    right, wrong = exact_law(den, L, 2, **kw), exact_law(den, L, 2, corrected=False, **kw)
    counts = empirical(draw(200_000, 13, steps=2, final="sample", **kw))
    stat, df = chi_square(counts, right)
    assert stat < chi_square_bound(df), stat
    assert chi_square(counts, wrong)[0] > 2 * chi_square_bound(df)


# ---------------------------------------------------------------- the sampler's exact law

LAW_DRAWS = 200_000
ENERGY5 = torch.randn(3**5, generator=torch.Generator().manual_seed(2)) * 1.5


def law_energy(length):
    table = ENERGY if length == L else ENERGY5

    def energy(x0, xt, t, proposal_logp):
        return table[seq_index(x0)]

    return energy


def law_counts(den, length, steps, seed, **kw):
    x = edlm.sample(
        den,
        batch_size=LAW_DRAWS,
        length=length,
        mask_id=MASK,
        steps=steps,
        final="sample",
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )
    return torch.bincount(seq_index(x), minlength=3**length).double()


@pytest.mark.slow  # 16 cases of 200k draws and an enumeration each (about 2 minutes in all)
@pytest.mark.parametrize("length", [4, 5])
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize("k", [1, 2])
def test_sampler_law_is_exact(length, steps, k):
    # 200k draws of edlm.sample(final="sample") against its law by enumeration: plain MDLM steps
    # (k = 1) and importance sampling at every step (k = 2, the closed-form SIR density). The
    # other k's law is rejected by the same draws: the test tells the two samplers apart.
    den = ToyDenoiser() if length == L else LengthToy(length, seed=3)
    energy = law_energy(length)
    laws = {kk: exact_law(den, length, steps, energy=energy, num_candidates=kk) for kk in (1, 2)}
    counts = law_counts(den, length, steps, 100 * steps + k, energy=energy, num_candidates=k)
    stat, df = chi_square(counts, laws[k])
    assert stat < chi_square_bound(df), (stat, df)
    assert chi_square(counts, laws[3 - k])[0] > 2 * chi_square_bound(df)


@pytest.mark.slow  # 200k draws for each energy
def test_sampler_law_with_the_ar_energies():
    # K = 2, 3 steps: the draws with each AR energy match that energy's exact law and reject the
    # other's (carry-over and whole-sequence differ already at K = 2).
    den = ToyDenoiser()
    energies = {c: AREnergy(ToyAR(), MASK, carry_over=c) for c in (True, False)}
    laws = {c: exact_law(den, L, 3, energy=e, num_candidates=2) for c, e in energies.items()}
    for c, e in energies.items():
        counts = law_counts(den, L, 3, 21 + c, energy=e, num_candidates=2)
        stat, df = chi_square(counts, laws[c])
        assert stat < chi_square_bound(df), (c, stat, df)
        assert chi_square(counts, laws[not c])[0] > 2 * chi_square_bound(df), c
