"""Tests of edlm.likelihood on an exact toy (V = 3 real tokens, L = 4: 81 sequences): the log Z
estimators bracket the enumerated log Z and converge to it, the NELBO and the paper's estimate
match quadrature over t of the sum over mask patterns, the carry-over AR energy has Z = 1."""

import itertools
import math

import numpy as np
import pytest
import torch
from toy import ENERGY, MASK, SEQS, L, ToyAR, ToyDenoiser, V, seq_id  # noqa: F401

from edlm import ops, schedule
from edlm.likelihood import evaluate_likelihood, log_z_estimates, nelbo, paper_estimate
from edlm.models import AREnergy


def table_energy(x0, xt, t, proposal_logp):
    return ENERGY[seq_id(x0)]


def exact_log_z(den, xt):
    return math.log((den.proposal(xt) * torch.exp(-ENERGY.double())).sum().item())


def exact_nelbo(den, x0, energy_table=False):
    """E_{t ~ U[T_MIN, 1]} (1/t) sum over mask patterns M of P(M | t) * term(M), by Gauss-Legendre
    quadrature (the integrand is a polynomial of degree L - 1 in t, so this is exact)."""
    patterns = []
    for bits in itertools.product([False, True], repeat=L):
        m = torch.tensor(bits)
        if not m.any():
            continue  # nothing masked: the term is 0
        xt = torch.where(m, MASK, x0)
        logp = den(xt[None], torch.ones(1))[0].double()
        term = -logp[torch.arange(L), x0][m].sum().item()
        if energy_table:
            term += ENERGY[seq_id(x0)].item() + exact_log_z(den, xt)
        patterns.append((int(m.sum()), term))
    nodes, weights = np.polynomial.legendre.leggauss(8)
    a, b = schedule.T_MIN, 1.0
    total = 0.0
    for node, w in zip(nodes, weights):
        t = 0.5 * (b - a) * node + 0.5 * (b + a)
        p = (1 - schedule.EPS) * t
        f = sum(p**k * (1 - p) ** (L - k) * term for k, term in patterns) / t
        total += 0.5 * (b - a) * w * f
    return total / (b - a)


# ---------------------------------------------------------------- log Z


def naive_estimates(energy):
    a = -energy.double()
    n = a.shape[-1]
    t_n = torch.log(torch.exp(a).mean(-1))
    loo = torch.stack(
        [
            torch.log(torch.exp(torch.cat([a[..., :j], a[..., j + 1 :]], -1)).mean(-1))
            for j in range(n)
        ]
    )
    return t_n, (2 * n - 1) * t_n - 2 * (n - 1) * loo.mean(0)


def test_log_z_estimates_match_their_definition():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 17):
        e = torch.randn(5, n, generator=g) * 3
        for got, want in zip(log_z_estimates(e), naive_estimates(e)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    e = torch.tensor([[0.0, 0.0]])  # n = 2 by hand: T_2 = 0, T_1 = 0
    assert [v.item() for v in log_z_estimates(e)] == [0.0, 0.0]
    # Spread far beyond exp's range, one draw dominating: stable, and still U_n >= T_n.
    e = torch.tensor([[-2000.0, 0.0, 5.0, 3000.0], [1.0, 1.0, 1.0, 1.0]])
    t_n, u_n = log_z_estimates(e)
    assert torch.isfinite(t_n).all() and torch.isfinite(u_n).all()
    torch.testing.assert_close(t_n, torch.tensor([2000.0 - math.log(4), -1.0], dtype=torch.float64))
    assert torch.all(u_n >= t_n)
    with pytest.raises(ValueError, match="n >= 2"):
        log_z_estimates(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="finite"):
        log_z_estimates(torch.tensor([[0.0, float("inf")]]))


@pytest.mark.parametrize("pattern", [[MASK] * L, [MASK, 1, MASK, MASK]])
def test_t_n_and_u_n_bracket_the_exact_log_z_and_converge(pattern):
    den, xt = ToyDenoiser(), torch.tensor(pattern)
    log_z = exact_log_z(den, xt)
    bias = {}
    for n, reps in ((2, 20000), (8, 8000), (64, 3000)):
        rows = xt.expand(reps, L).contiguous()
        cand, _ = ops.masked_sample(
            den(rows, torch.ones(reps)),
            rows,
            MASK,
            num_samples=n,
            generator=torch.Generator().manual_seed(n),
        )
        t_n, u_n = log_z_estimates(table_energy(cand, None, None, None))  # [reps]
        assert torch.all(u_n >= t_n - 1e-12)  # Jensen, draw by draw
        (mt, st), (mu_, su) = [(v.mean().item(), v.std().item() / reps**0.5) for v in (t_n, u_n)]
        assert mt < log_z + 3 * st and mu_ > log_z - 3 * su, (n, mt, log_z, mu_)
        bias[n] = (mt - log_z, mu_ - log_z)
    for n in (2, 8):  # there the bias (about c / n) dwarfs the standard error
        assert bias[n][0] < -0.03 and bias[n][1] > 0.03, bias
    assert abs(bias[64][0]) < abs(bias[8][0]) < abs(bias[2][0]), bias
    assert abs(bias[64][1]) < abs(bias[8][1]) < abs(bias[2][1]), bias
    assert max(map(abs, bias[64])) < 0.03, bias


@pytest.mark.parametrize("pattern", [[MASK] * L, [MASK, 1, MASK, MASK], [2, MASK, 0, MASK]])
def test_carry_over_ar_energy_has_z_one(pattern):
    den, ar, xt = ToyDenoiser(), ToyAR(), torch.tensor(pattern)
    mu = den.proposal(xt)
    consistent = mu > 0
    e = AREnergy(ar, MASK, carry_over=True)(
        SEQS, xt.expand(81, L), torch.ones(81), torch.log(mu).float()
    ).double()
    assert torch.where(consistent, mu * torch.exp(-e), 0.0).sum().item() == pytest.approx(
        1.0, abs=1e-6
    )
    e_full = AREnergy(ar, MASK, carry_over=False)(
        SEQS, xt.expand(81, L), torch.ones(81), torch.log(mu).float()
    )
    if (xt != MASK).any():  # the full-sequence variant is not normalized
        assert torch.where(consistent, mu * torch.exp(-e_full.double()), 0.0).sum().item() < 0.99


# ---------------------------------------------------------------- the NELBO


def replicate(seqs, copies):
    return torch.tensor(seqs).repeat_interleave(copies, 0)


def per_seq_stats(values, copies):
    v = values.view(-1, copies)
    return v.mean(1), v.std(1) / copies**0.5


def test_mdlm_nelbo_matches_quadrature():
    seqs, copies = [[0, 1, 2, 0], [2, 2, 2, 2], [1, 0, 0, 2]], 2000
    den = ToyDenoiser()
    est = nelbo(
        den,
        replicate(seqs, copies),
        num_t=4,
        batch_size=4096,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.dtype == torch.float64 and est.shape == (len(seqs) * copies,)
    mean, se = per_seq_stats(est, copies)
    for s, m, e in zip(seqs, mean.tolist(), se.tolist()):
        exact = exact_nelbo(den, torch.tensor(s))
        assert abs(m - exact) < 4 * e, (s, m, exact, e)
        assert e < 0.02 * exact  # the check has teeth


def test_times_are_antithetic_within_a_sequence():
    den = ToyDenoiser()
    nelbo(den, replicate([[0, 1, 2, 0]], 5), num_t=4, generator=torch.Generator().manual_seed(1))
    t = ((torch.cat(den.times).double() - schedule.T_MIN) / (1 - schedule.T_MIN)).view(5, 4)
    assert torch.all((t >= 0) & (t <= 1))
    gaps = torch.remainder(t - t[:, :1], 1.0)  # offsets j / num_t from the sequence's own u
    torch.testing.assert_close(gaps, torch.arange(4).double().expand(5, 4) / 4, atol=1e-6, rtol=0)
    assert t[:, 0].unique().numel() == 5  # each sequence has its own u


def test_paper_estimate_matches_quadrature_with_exact_log_z():
    # The 1/t weight makes single estimates noisy (sd ~ 8 nats), so this pins the assembly of
    # the terms (1/t, +E, +log Z), while the log Z test above pins the estimators' biases.
    seqs, copies = [[0, 1, 2, 0], [1, 0, 0, 2]], 1000
    den = ToyDenoiser()
    out = paper_estimate(
        den,
        table_energy,
        replicate(seqs, copies),
        num_t=16,
        num_is=8,
        batch_size=8192,
        generator=torch.Generator().manual_seed(0),
    )
    assert out["z_exact"] is False and torch.all(out["paper_u"] >= out["paper_t"] - 1e-9)
    for i, s in enumerate(seqs):
        x0 = torch.tensor(s)
        exact = exact_nelbo(den, x0, energy_table=True)
        # Teeth: MDLM, a missing log Z, or the energy's sign flipped are all far off.
        wrong = [exact_nelbo(den, x0), exact_without_log_z(den, x0), exact_flipped(den, x0)]
        for key in ("paper_t", "paper_u"):
            mean, se = (v[i].item() for v in per_seq_stats(out[key], copies))
            assert abs(mean - exact) < 4 * se, (s, key, mean, exact, se)
            assert all(abs(w - exact) > 4 * se for w in wrong), (s, key, wrong, exact, se)


def exact_without_log_z(den, x0):
    global exact_log_z
    keep, exact_log_z = exact_log_z, lambda den, xt: 0.0
    try:
        return exact_nelbo(den, x0, energy_table=True)
    finally:
        exact_log_z = keep


def exact_flipped(den, x0):
    global ENERGY
    ENERGY = -ENERGY
    try:
        return exact_nelbo(den, x0, energy_table=True)
    finally:
        ENERGY = -ENERGY


def test_paper_estimate_with_carry_over_ar_energy_is_the_ar_nll():
    seqs, copies = [[0, 1, 2, 0], [1, 1, 0, 2]], 1500
    ar = ToyAR()
    out = paper_estimate(
        ToyDenoiser(),
        AREnergy(ar, MASK, carry_over=True),
        replicate(seqs, copies),
        num_t=4,
        num_is=2,
        generator=torch.Generator().manual_seed(3),
    )
    assert out["z_exact"] is True and torch.equal(out["paper_t"], out["paper_u"])
    mean, se = per_seq_stats(out["paper_t"], copies)
    want = (1 - schedule.EPS) * ar.nll(torch.tensor(seqs))  # the integrand's mean is t-free
    assert torch.all((mean - want).abs() < 4 * se), (mean, want, se)


def test_bad_inputs():
    den = ToyDenoiser()
    with pytest.raises(ValueError, match="mask id"):
        nelbo(den, torch.tensor([[0, MASK, 1, 2]]))
    with pytest.raises(ValueError, match="int64"):
        nelbo(den, torch.zeros(2, L, dtype=torch.int32))
    with pytest.raises(ValueError, match="num_is must be >= 2"):
        paper_estimate(den, table_energy, torch.zeros(2, L, dtype=torch.long), num_is=1)


# ---------------------------------------------------------------- evaluate_likelihood


def test_evaluate_likelihood_on_a_toy_tensor_dataset():
    data = SEQS[torch.randperm(81, generator=torch.Generator().manual_seed(0))[:40]]
    res = evaluate_likelihood(
        ToyDenoiser(),
        data,
        num_sequences=30,
        num_t=4,
        batch_size=16,
        energy=table_energy,
        num_is=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert res["num_sequences"] == 30 and res["length"] == L and res["num_is"] == 4
    for name in ("nelbo", "paper_t", "paper_u"):
        m = res[f"{name}_per_token"]
        assert res[f"{name}_perplexity"] == pytest.approx(math.exp(m))
        assert res[f"{name}_bits_per_token"] == pytest.approx(m / math.log(2))
        assert 0 < res[f"{name}_se"] < m
    assert res["paper_t_per_token"] < res["paper_u_per_token"]
    ar = evaluate_likelihood(
        ToyDenoiser(),
        data,
        num_sequences=8,
        num_t=2,
        batch_size=16,
        energy=AREnergy(ToyAR(), MASK, carry_over=True),
        generator=torch.Generator().manual_seed(0),
    )
    assert ar["log_z"].startswith("exact") and ar["paper_t_per_token"] == ar["paper_u_per_token"]
    with pytest.raises(ValueError, match="asked for 99 sequences"):
        evaluate_likelihood(ToyDenoiser(), data, num_sequences=99)


def test_evaluate_likelihood_with_real_models_and_a_packed_dataset(tmp_path):
    from edlm.config import ModelConfig
    from edlm.data import PackedDataset
    from edlm.models import Denoiser, EnergyModel
    from edlm.prepare import prepare

    text = tmp_path / "t.txt"
    text.write_text("it is a truth universally acknowledged that a single man in possession " * 6)
    prepare(text, "char", tmp_path / "d.bin", block_size=16)
    data = PackedDataset(tmp_path / "d.bin", seed=0)
    torch.manual_seed(0)
    den = Denoiser(
        ModelConfig(vocab_size=28, length=16, dim=32, n_heads=2, n_layers=1, cond_dim=16)
    ).eval()
    with pytest.raises(ValueError, match="training mode"):
        evaluate_likelihood(den.train(), data, num_sequences=2)
    den.eval()
    energy = EnergyModel.from_denoiser(den).eval()  # a fresh energy is 0: EDLM = MDLM exactly
    res = evaluate_likelihood(
        den,
        data,
        num_sequences=6,
        num_t=2,
        batch_size=4,
        energy=energy,
        num_is=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert res["length"] == 16 and res["num_sequences"] == 6
    assert res["paper_t_per_token"] == pytest.approx(res["nelbo_per_token"], rel=1e-6)
    assert res["paper_u_per_token"] == pytest.approx(res["nelbo_per_token"], rel=1e-6)
    assert 1.0 < res["nelbo_perplexity"] < 500
