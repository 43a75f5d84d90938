"""The austen-oracle source (edlm.oracle): exact probabilities against enumeration, exact sampling
by chi-square, the exact denoiser against brute force, the source energy's SIR law, determinism."""

import itertools
import math

import numpy as np
import pytest
import torch

import edlm
from edlm.checkpoint import load_energy
from edlm.corpora import austen_oracle, dataset_path
from edlm.oracle import ALPHABET, MarkovSource, OracleDenoiser, SourceEnergy
from edlm.prepare import read_header

A = ALPHABET
MASK = 27
# sha256 of the fitted chain (order and transition bytes): the same on every machine.
DIGEST = "142acce1f5c38972db98a7662699fba4215acac3ceb2d99bb8676b6cde3a92ae"


@pytest.fixture(scope="module")
def source():
    return austen_oracle()


def chi_square_p(observed, expected):
    """Upper-tail p-value of Pearson's statistic, cells with expected < 5 pooled (Wilson-Hilferty)."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    stat = ((observed - expected) ** 2 / expected).sum()
    k = len(expected) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_fit_is_deterministic_and_known(source):
    assert source.order == 2
    assert source.digest() == DIGEST, source.digest()
    again = MarkovSource.fit(edlm.corpora.corpus_documents("austen", "train"), 2)
    assert again.digest() == source.digest()
    assert (source.transition > 0).all()
    np.testing.assert_allclose(source.transition.sum(-1), 1.0, atol=1e-12)
    # stationary: pi P = pi
    pi = source.stationary
    moved = np.einsum("ab,abc->bc", pi, source.transition)
    np.testing.assert_allclose(moved, pi, atol=1e-14)


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_log_prob_sums_to_one(source, length):
    x = torch.tensor(list(itertools.product(range(A), repeat=length)))
    total = source.log_prob(x).exp().sum().item()
    assert abs(total - 1.0) < 1e-12


def test_log_prob_matches_the_definition(source):
    x = torch.tensor([[7, 4, 26, 0, 13, 3, 26], [19, 7, 4, 26, 4, 13, 3]])
    by_hand = []
    for row in x.tolist():
        lp = math.log(source.stationary[row[0], row[1]])
        for t in range(2, len(row)):
            lp += math.log(source.transition[row[t - 2], row[t - 1], row[t]])
        by_hand.append(lp)
    assert torch.allclose(
        source.log_prob(x), torch.tensor(by_hand, dtype=torch.float64), atol=1e-12
    )


def test_log_prob_rejects_bad_tokens(source):
    with pytest.raises(ValueError, match="log_prob.*27"):
        source.log_prob(torch.tensor([[0, 27, 1]]))
    with pytest.raises(ValueError, match=r"log_prob.*\[N, L\]"):
        source.log_prob(torch.tensor([0, 1, 2]))


def test_log_prob_is_fast(source):
    # vectorized: 256k characters is one table lookup (asserted as work done, not time)
    x = source.sample(1024, 256, generator=torch.Generator().manual_seed(0))
    assert source.log_prob(x).shape == (1024,)


def test_sampling_matches_log_prob(source):
    gen = torch.Generator().manual_seed(1)
    x = source.sample(200_000, 5, generator=gen)
    # the head (x0, x1) against the stationary distribution
    pairs = torch.bincount(x[:, 0] * A + x[:, 1], minlength=A * A).numpy()
    assert chi_square_p(pairs, 200_000 * source.stationary.reshape(-1)) > 1e-4
    # (x3, x4): stationarity of the transitions' draws
    later = torch.bincount(x[:, 3] * A + x[:, 4], minlength=A * A).numpy()
    assert chi_square_p(later, 200_000 * source.stationary.reshape(-1)) > 1e-4
    # x4 given the most common state (x2, x3): the transition row itself
    state = np.unravel_index(np.argmax(source.stationary), source.stationary.shape)
    sel = (x[:, 2] == int(state[0])) & (x[:, 3] == int(state[1]))
    counts = torch.bincount(x[sel, 4], minlength=A).numpy()
    assert chi_square_p(counts, sel.sum().item() * source.transition[state]) > 1e-4


def test_chi_square_catches_an_off_by_one_state(source):
    # the same draws scored against the transitions of the wrong state must fail
    gen = torch.Generator().manual_seed(1)
    x = source.sample(200_000, 5, generator=gen)
    state = np.unravel_index(np.argmax(source.stationary), source.stationary.shape)
    sel = (x[:, 2] == int(state[0])) & (x[:, 3] == int(state[1]))
    counts = torch.bincount(x[sel, 4], minlength=A).numpy()
    wrong = source.transition[(int(state[0]) + 1) % A, int(state[1])]
    assert chi_square_p(counts, sel.sum().item() * wrong) < 1e-6


def test_sampling_is_reproducible(source):
    a = source.sample(4, 64, generator=torch.Generator().manual_seed(3))
    b = source.sample(4, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < A


def test_entropy_rate_against_monte_carlo(source):
    H = source.entropy_rate
    assert 2.4 < H < 2.8
    L = 4096
    x = source.sample(64, L, generator=torch.Generator().manual_seed(5))
    per_char = -source.log_prob(x) / (L * math.log(2))
    # each 4096-character chain is nearly independent of the others: SE from their spread
    se = per_char.std().item() / math.sqrt(len(per_char))
    assert se < 0.01
    assert abs(per_char.mean().item() - source.sequence_entropy(L)) < 4 * se
    assert abs(source.sequence_entropy(L) - H) < 0.002
    assert source.sequence_entropy(1) == pytest.approx(source.ngram_entropy(1))


def brute_marginals(source, xt):
    L = xt.shape[1]
    allx = torch.tensor(list(itertools.product(range(A), repeat=L)))
    p = source.log_prob(allx).exp()
    out = torch.zeros(xt.shape[0], L, A, dtype=torch.float64)
    for b in range(xt.shape[0]):
        ok = ((allx == xt[b]) | (xt[b] == MASK)).all(-1)
        w = p[ok] / p[ok].sum()
        for pos in range(L):
            out[b, pos] = torch.bincount(allx[ok][:, pos], weights=w, minlength=A)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginals_against_brute_force(source, seed):
    gen = torch.Generator().manual_seed(seed)
    x = source.sample(6, 4, generator=gen)
    xt = torch.where(torch.rand(6, 4, generator=gen) < 0.6, MASK, x)
    xt[0] = MASK  # all masked: the stationary marginals
    got = source.marginals(xt, MASK, chunk=4)
    want = brute_marginals(source, xt)
    assert torch.allclose(got, want, atol=1e-12), (got - want).abs().max()


def test_marginals_errors(source):
    with pytest.raises(ValueError, match="shorter than the chain's order"):
        source.marginals(torch.full((1, 1), MASK), MASK)
    with pytest.raises(ValueError, match="tokens must be in"):
        source.marginals(torch.tensor([[0, 40, MASK]]), MASK)


def test_oracle_denoiser_reuses_rows_exactly(source):
    den = OracleDenoiser(source, 6)
    gen = torch.Generator().manual_seed(4)
    x = source.sample(5, 6, generator=gen)
    xt = torch.where(torch.rand(5, 6, generator=gen) < 0.7, MASK, x)
    first = den(xt, torch.ones(5))
    xt2 = xt.clone()
    xt2[1, 2] = x[1, 2]  # one row changes
    second = den(xt2, torch.ones(5))
    fresh = OracleDenoiser(source, 6)(xt2, torch.ones(5))
    assert torch.equal(second, fresh)
    assert torch.equal(first[0], second[0])
    assert torch.isinf(second[..., MASK]).all() and second.shape == (5, 6, 28)
    with pytest.raises(ValueError, match=r"L >= 2"):
        den(torch.full((2, 1), MASK), torch.ones(2))


@pytest.mark.slow
def test_source_energy_sir_law_tends_to_the_source(source):
    """One EDLM step from all masked with the exact denoiser (the product of stationary marginals,
    L = 2) and the source as the energy: the chosen candidate's law is exactly the SIR law for
    K = 2 and approaches the source's p(x) as K grows (what k -> infinity targets)."""
    L, N = 2, 200_000
    den = OracleDenoiser(source, L)
    energy = SourceEnergy(source)
    allx = torch.tensor(list(itertools.product(range(A), repeat=L)))
    p = source.log_prob(allx).exp()
    q = torch.from_numpy(np.outer(source.stationary.sum(0), source.stationary.sum(0)).reshape(-1))
    w = p / q  # exp(-E) with E = -log p + log q
    sir2 = 2 * q * (q[None, :] * w[:, None] / (w[:, None] + w[None, :])).sum(1)
    tvs = {}
    for k in (1, 2, 8, 32):
        x = edlm.sample(
            den,
            batch_size=N,
            length=L,
            mask_id=MASK,
            steps=1,
            energy=energy,
            num_candidates=k,
            final="sample",
            generator=torch.Generator().manual_seed(k),
        )
        emp = torch.bincount(x[:, 0] * A + x[:, 1], minlength=A * A).double() / N
        tvs[k] = 0.5 * (emp - p).abs().sum().item()
        if k == 2:
            assert chi_square_p(emp.numpy() * N, N * sir2.numpy()) > 1e-4
            assert chi_square_p(emp.numpy() * N, N * p.numpy()) < 1e-6  # SIR(2) is not p yet
        if k == 1:
            assert chi_square_p(emp.numpy() * N, N * q.numpy()) > 1e-4
    assert tvs[1] > tvs[2] > tvs[8] > tvs[32]
    assert tvs[32] < 0.25 * tvs[1]


def test_oracle_energy_spec(tmp_path, source):
    e = load_energy("oracle:", mask_id=27, vocab_size=28)
    assert isinstance(e, SourceEnergy) and e.source is source and not e.self_normalized
    source.save(tmp_path / "src.safetensors")
    loaded = load_energy(f"oracle:{tmp_path / 'src.safetensors'}", mask_id=27, vocab_size=28)
    assert loaded.source.digest() == source.digest()
    with pytest.raises(ValueError, match="oracle.*vocabulary of 50258"):
        load_energy("oracle:", mask_id=50257, vocab_size=50258)


def test_austen_oracle_dataset(tmp_path, monkeypatch, source):
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path))
    path = dataset_path("austen-oracle", "valid")
    header = read_header(path)
    assert header["count"] == 128 * 4096 and header["tokenizer"] == "char"
    assert source.digest() in header["source"]
    tokens = np.memmap(path, dtype=header["dtype"], mode="r")
    assert tokens.max() < A
    # the file is fresh samples of the source: its per-character score is the entropy rate
    x = torch.from_numpy(np.asarray(tokens[: 64 * 4096], dtype=np.int64)).reshape(64, 4096)
    bpc = (-source.log_prob(x) / (4096 * math.log(2))).mean().item()
    assert abs(bpc - source.entropy_rate) < 0.03
    mtime = path.stat().st_mtime_ns
    assert dataset_path("austen-oracle", "valid") == path and path.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        dataset_path("austen-oracle", "dev")
