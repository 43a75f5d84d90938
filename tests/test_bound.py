"""Tests of edlm.bound against exact enumeration on the toy (V = 3, L = 4): the T-step sampler's
law and its discrete-time ELBO are enumerated over every assignment of positions to steps; the
estimators' means lie above the exact NLL and converge to the exact ELBO as the number of
completions grows, and the paper's continuous-time formula, a wrong estimator of it, fails the
same check."""

import itertools
import math

import pytest
import torch
from test_likelihood import exact_nelbo
from toy import ENERGY, MASK, SEQS, L, ToyAR, ToyDenoiser, seq_id

from edlm import schedule
from edlm.bound import evaluate_bound, sampler_bound
from edlm.models import AREnergy

X0 = torch.tensor([0, 2, 1, 1])


def table_energy(x0, xt, t, proposal_logp):
    return ENERGY[seq_id(x0)]


def zero_energy(x0, xt, t, proposal_logp):
    return torch.zeros(x0.shape[0])


def weights(energy, den, xt):
    """w = exp(-E) over the 81 sequences at xt (0 where mu is 0), float64 [81]."""
    mu = den.proposal(xt)
    ok = mu > 0
    e = energy(
        SEQS[ok], xt.expand(int(ok.sum()), L), torch.ones(int(ok.sum())), mu[ok].log().float()
    )
    w = torch.zeros(81, dtype=torch.float64)
    w[ok] = torch.exp(-e.double())
    return mu, w


def chosen_law(den, xt, energy, K):
    """The law over the 81 sequences of the candidate an importance-sampling step keeps: K = 1
    mu itself, K = 2 or 3 the SIR density by enumerating the competitors, "inf" mu w / Z."""
    mu, w = weights(energy, den, xt) if energy is not None else (den.proposal(xt), None)
    if energy is None or K == 1:
        return mu
    if K == "inf":
        q = mu * w
        return q / q.sum()
    ok = mu > 0
    mz, wz = mu[ok], w[ok]
    if K == 2:
        share = (mz[None] * w[:, None] / (w[:, None] + wz[None])).sum(1)
    elif K == 3:
        pw, pp = wz[:, None] + wz[None], mz[:, None] * mz[None]
        share = (pp[None] * w[:, None, None] / (w[:, None, None] + pw[None])).sum((1, 2))
    else:
        raise ValueError(K)
    return K * mu * share


def exact(den, x0, steps, energy=None, K=2, window=1.0):
    """(exact -log p_T(x0), exact T-step ELBO) of the sampler with a sampling final step."""
    grid = schedule.sampling_grid(steps)
    prob = [float(grid[i] - grid[i + 1]) for i in range(steps)] + [float(grid[-1])]
    p_total, elbo, laws = 0.0, 0.0, {}
    for assign in itertools.product(range(steps + 1), repeat=L):
        a = torch.tensor(assign)
        pa = math.prod(prob[j] for j in assign)
        log_pi = 0.0
        for i in sorted(set(assign)):
            reveal, masked = a == i, a >= i
            xt = torch.where(masked, MASK, x0)
            is_step = energy is not None and i < steps and float(grid[i]) > 1 - window
            key = (tuple(xt.tolist()), is_step)
            if key not in laws:
                laws[key] = chosen_law(den, xt, energy if is_step else None, K)
            q = laws[key]
            log_pi += math.log(q[(SEQS[:, reveal] == x0[reveal]).all(-1)].sum().item())
        p_total += pa * math.exp(log_pi)
        elbo += pa * -log_pi
    return -math.log(p_total), elbo


def estimate(den, steps, energy, K, bound, m, n=20000, seed=0, window=1.0):
    g = torch.Generator().manual_seed(seed)
    out = sampler_bound(
        den,
        X0.expand(n, L).clone(),
        steps=steps,
        energy=energy,
        num_candidates=K,
        bound=bound,
        num_completions=m,
        generator=g,
        window=window,
    )
    return {k: (v.mean().item(), v.std().item() / math.sqrt(n)) for k, v in out.items()}


def is_bound_of(values, nll, elbo):
    """A sequence of (mean, se), the last one with the most completions: every mean at or above
    the exact NLL, and the last within 4 standard errors of the exact ELBO."""
    above = all(mean > nll - 4 * se for mean, se in values)
    return above and abs(values[-1][0] - elbo) < 4 * values[-1][1] + 0.01


def test_exact_elbo_is_above_the_exact_nll_and_equals_mdlm_for_a_zero_energy():
    den = ToyDenoiser()
    for steps in (1, 2, 3):
        nll, elbo = exact(den, X0, steps)
        assert elbo >= nll - 1e-12
        # w = 1: SIR keeps a draw of mu (the toy's mu is float32, hence the tolerance)
        assert exact(den, X0, steps, zero_energy, K=2) == pytest.approx((nll, elbo), abs=1e-6)
        for K in (2, 3, "inf"):
            nll_k, elbo_k = exact(den, X0, steps, table_energy, K=K)
            assert elbo_k >= nll_k - 1e-12


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_mdlm_term_is_exact_given_tau_and_averages_to_the_exact_elbo(steps):
    den = ToyDenoiser()
    _, elbo = exact(den, X0, steps)
    mean, se = estimate(den, steps, None, 1, "sir", 1)["mdlm"]
    assert abs(mean - elbo) < 4 * se + 1e-4, (mean, elbo, se)  # one step: tau hardly matters


def test_zero_energy_gives_mdlm_exactly():
    den = ToyDenoiser()
    g = torch.Generator().manual_seed(3)
    x = SEQS[torch.randperm(81, generator=g)[:16]]
    for bound, m in (("sir", 3), ("infinite", 4)):
        out = sampler_bound(
            den,
            x,
            steps=3,
            energy=zero_energy,
            num_candidates=3,
            bound=bound,
            num_completions=m,
            generator=torch.Generator().manual_seed(1),
        )
        torch.testing.assert_close(out["edlm"], out["mdlm"], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "steps,K",
    [
        (2, 2),
        pytest.param(3, 2, marks=pytest.mark.slow),
        pytest.param(2, 3, marks=pytest.mark.slow),
    ],
)
def test_sir_bound_converges_to_the_exact_elbo_and_stays_above_the_nll(steps, K):
    den = ToyDenoiser()
    nll, elbo = exact(den, X0, steps, table_energy, K=K)
    values = [estimate(den, steps, table_energy, K, "sir", m)["edlm"] for m in (1, 4, 64)]
    assert is_bound_of(values, nll, elbo), (values, nll, elbo)
    assert values[0][0] > values[-1][0] - 4 * values[-1][1]  # Jensen: fewer completions, higher
    # The paper's continuous-time formula (its exact value, by quadrature, with the exact log Z)
    # is not this bound: the same check fails for it.
    paper = exact_nelbo(den, X0, energy_table=True)
    assert not is_bound_of([(paper, 0.0)], nll, elbo), (paper, nll, elbo)


@pytest.mark.slow  # 256 completions for 20000 draws of tau
def test_infinite_bound_converges_to_the_exact_elbo():
    den = ToyDenoiser()
    nll, elbo = exact(den, X0, 3, table_energy, K="inf")
    values = [
        estimate(den, 3, table_energy, 4, "infinite", m, n=n) for m, n in ((4, 20000), (512, 4000))
    ]
    values = [v["edlm"] for v in values]
    assert values[0][0] > values[1][0]  # T_m's Jensen gap shrinks as m grows
    assert is_bound_of(values, nll, elbo), (values, nll, elbo)


def test_infinite_bound_with_a_self_normalized_energy_draws_no_log_z():
    den, ar = ToyDenoiser(), ToyAR()
    carry = AREnergy(ar, MASK, carry_over=True)
    assert carry.self_normalized
    nll, elbo = exact(den, X0, 2, carry, K="inf")
    values = [
        estimate(den, 2, carry, 4, "infinite", m, n=n)["edlm"]
        for m, n in ((4, 20000), (1024, 2000))
    ]
    assert is_bound_of(values, nll, elbo), (values, nll, elbo)


def test_window_leaves_the_late_steps_plain():
    den = ToyDenoiser()
    nll, elbo = exact(den, X0, 3, table_energy, K=2, window=0.5)
    assert is_bound_of(
        [estimate(den, 3, table_energy, 2, "sir", 64, window=0.5)["edlm"]], nll, elbo
    )
    nll, elbo = exact(den, X0, 3, table_energy, K=2, window=0.0)
    assert elbo == pytest.approx(exact(den, X0, 3)[1])  # no IS step: MDLM's ELBO


def test_evaluate_bound_and_bad_input():
    den = ToyDenoiser()
    res = evaluate_bound(
        den,
        SEQS[:8],
        steps=3,
        energy=table_energy,
        num_candidates=2,
        num_completions=4,
        num_tau=16,
        generator=torch.Generator().manual_seed(0),
    )
    assert res["num_sequences"] == 8 and res["bound"] == "sir" and res["edlm_T_se"] > 0
    assert res["mdlm_T_per_token"] > 0
    with pytest.raises(ValueError, match="bound must be one of sir, infinite"):
        sampler_bound(den, SEQS[:2], steps=2, energy=table_energy, bound="paper")
    with pytest.raises(ValueError, match="contains the mask id"):
        sampler_bound(den, torch.full((1, L), MASK), steps=2)
    with pytest.raises(ValueError, match="infinite bound needs num_completions >= 2"):
        sampler_bound(
            den, SEQS[:2], steps=2, energy=table_energy, bound="infinite", num_completions=1
        )
