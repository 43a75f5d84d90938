"""Tests of top_p / top_k in edlm.ops.masked_sample against edlm.reference: the truncated law
(goodness of fit that a kept set off by one token fails), ties at the threshold, the off path
draw for draw, greedy, log-probabilities, exact tails inside the kept set, bad values, and
edlm.sample passing them through."""

import math

import pytest
import torch
from statcheck import chi_square, chi_square_bound

import edlm
from edlm import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def rows(V=64):
    """[4, 1, V] logits whose rows differ; the last is heavy-tailed (a few large logits, a long
    Cauchy tail, its top logits tied)."""
    g = torch.Generator().manual_seed(42)
    ramp = torch.linspace(-3, 3, V)
    cauchy = (0.7 * torch.tan(math.pi * (torch.rand(V, generator=g) - 0.5))).clamp(-40, 4)
    return torch.stack([ramp, -ramp, 1.5 * torch.randn(V, generator=g), cauchy]).unsqueeze(1)


def counts_of(tokens, V):
    """tokens [B, K, L] -> counts [B, L, V]."""
    B, K, L = tokens.shape
    out = torch.zeros(B, L, V, dtype=torch.float64)
    out.scatter_add_(2, tokens.permute(0, 2, 1).cpu(), torch.ones(B, L, K, dtype=torch.float64))
    return out


def head_masses(logits, mask_id, temperature, top_k):
    """mass(t) at every distinct real logit of each row (of the top-k law): [B, L, V] float64."""
    probs = reference.masked_sample_probs(logits, mask_id, temperature, 1.0, top_k)
    x = logits.double()
    ge = x.unsqueeze(-1) <= x.unsqueeze(-2)  # [B, L, V(t), V(j)]: x_j >= x_t
    return (ge * probs.unsqueeze(-2)).sum(-1)


CASES = [  # (top_p, top_k, temperature)
    (0.9, 0, 1.0),
    (0.6, 0, 0.7),
    (1.0, 10, 1.0),
    (0.8, 20, 2.0),
    (0.97, 0, 1.3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_p,top_k,temperature", CASES)
def test_goodness_of_fit(device_isa, dtype, top_p, top_k, temperature):
    device = device_isa
    V, K = 64, 20000
    logits = rows(V).to(dtype).float()  # the values the kernel sees
    # No cumulative mass within 1e-4 of top_p: the kernel's fp32 masses cannot flip the set.
    if top_p < 1.0:
        gap = (head_masses(logits, V - 1, temperature, top_k) - top_p).abs()
        assert gap[..., : V - 1].min() > 1e-4
    xt = torch.full((4, 1), V - 1, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(dtype).to(device),
        xt,
        V - 1,
        num_samples=K,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        generator=gen(9, device),
    )
    counts = counts_of(tokens, V)
    probs = reference.masked_sample_probs(logits, V - 1, temperature, top_p, top_k)
    plain = reference.masked_sample_probs(logits, V - 1, temperature)
    for b in range(4):
        kept = int((probs[b, 0] > 0).sum())
        assert 1 < kept < V - 1  # truncation does something here, and leaves a law to test
        stat, df = chi_square(counts[b, 0], probs[b, 0])
        assert stat < chi_square_bound(df), f"row {b}: chi2 {stat:.1f} with {df} df"
        # The untruncated law has mass outside the kept set: never drawn, so it fails.
        assert chi_square(counts[b, 0], plain[b, 0])[0] > chi_square_bound(df)


def drop_boundary(probs, logits):
    """A wrong law: the kept set without its lowest-logit token (the boundary), renormalized."""
    x = logits.double().masked_fill(probs == 0, float("inf"))
    boundary = x.argmin(-1, keepdim=True)
    wrong = probs.scatter(-1, boundary, 0.0)
    return wrong / wrong.sum(-1, keepdim=True)


@pytest.mark.parametrize("top_p,top_k", [(0.9, 0), (1.0, 10), (0.8, 20)])
def test_kept_set_off_by_one_token_fails(device, top_p, top_k):
    # The statistical test has teeth: draws from a kernel that dropped the boundary token (or one
    # that kept a token too many) would not pass it. Here the op passes against the right law and
    # fails against each off-by-one law.
    V, K = 64, 40000
    logits = rows(V)
    probs = reference.masked_sample_probs(logits, V - 1, 1.0, top_p, top_k)
    xt = torch.full((4, 1), V - 1, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(device),
        xt,
        V - 1,
        num_samples=K,
        top_p=top_p,
        top_k=top_k,
        generator=gen(3, device),
    )
    counts = counts_of(tokens, V)
    for b in range(4):
        stat, df = chi_square(counts[b, 0], probs[b, 0])
        assert stat < chi_square_bound(df)
        wrong = drop_boundary(probs[b, 0], logits[b, 0])
        assert chi_square(counts[b, 0], wrong)[0] > chi_square_bound(df)
        # One token too many: the next real logit below the set joins it.
        x = logits[b, 0].double().clone()
        x[V - 1] = float("-inf")
        below = x.masked_fill(probs[b, 0] > 0, float("-inf")).argmax()
        extra = probs[b, 0].clone()
        extra[below] = math.exp(x[below].item()) / torch.exp(x[probs[b, 0] > 0]).sum().item()
        extra = extra / extra.sum()
        assert chi_square(counts[b, 0], extra)[0] > chi_square_bound(df)


def test_ties_at_the_threshold_are_all_kept(device):
    # Logits 5, 2, 2, 0, ...: the 2nd largest logit (top_k = 2) and the top_p head both end in a
    # tie at 2; both tied tokens are kept and drawn, at their true (equal) rates.
    V, K = 9, 30000
    logits = torch.tensor([5.0, 2.0, 2.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0]).expand(1, 1, V)
    head = math.exp(5) / (math.exp(5) + 2 * math.exp(2))  # 0.91: the first token alone
    xt = torch.full((1, 1), V - 1, device=device)
    for kw in ({"top_k": 2}, {"top_k": 3}, {"top_p": 0.95}, {"top_p": 0.95, "top_k": 2}):
        tokens, _ = ops.masked_sample(
            logits.to(device), xt, V - 1, num_samples=K, generator=gen(1, device), **kw
        )
        counts = torch.bincount(tokens.flatten().cpu(), minlength=V)
        assert counts[1] > 0 and counts[2] > 0 and counts[3:].sum() == 0, (kw, counts)
        probs = reference.masked_sample_probs(logits, V - 1, **kw)[0, 0]
        torch.testing.assert_close(probs[0].item(), head, rtol=0, atol=1e-12)
        stat, df = chi_square(counts, probs)
        assert stat < chi_square_bound(df)


@pytest.mark.parametrize("dtype", DTYPES)
def test_off_is_the_plain_op_draw_for_draw(device, dtype):
    torch.manual_seed(0)
    B, L, V = 3, 17, 1001
    logits = (torch.randn(B, L, V) * 3).to(dtype).to(device)
    xt = torch.full((B, L), V - 1, device=device)
    xt[:, ::3] = 5
    want = ops.masked_sample(logits, xt, V - 1, num_samples=4, generator=gen(2, device))
    for kw in ({"top_p": 1.0}, {"top_k": 0}, {"top_k": V - 1}, {"top_k": 10**6, "top_p": 1.0}):
        got = ops.masked_sample(logits, xt, V - 1, num_samples=4, generator=gen(2, device), **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), kw
    # A truncation that keeps everything draws from the same law but is not the same code path:
    # top_k = V - 2 keeps all but the smallest logit, so draws differ somewhere.
    other = ops.masked_sample(
        logits, xt, V - 1, num_samples=4, top_k=V - 2, generator=gen(2, device)
    )
    assert not torch.equal(other[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_top_p_and_top_k_1_are_greedy(device, dtype):
    torch.manual_seed(1)
    B, L, V = 2, 9, 3000
    logits = (torch.randn(B, L, V) * 2).to(dtype)
    logits[..., V - 1] = 100.0  # the mask column is never the argmax
    xt = torch.full((B, L), V - 1)
    argmax = logits[..., : V - 1].float().argmax(-1)  # [B, L]
    for kw in ({"top_p": 1e-9}, {"top_k": 1}, {"top_p": 1e-300, "top_k": 7}):
        tokens, logp = ops.masked_sample(
            logits.to(device), xt.to(device), V - 1, num_samples=5, generator=gen(0, device), **kw
        )
        assert torch.equal(tokens.cpu(), argmax.unsqueeze(1).expand(B, 5, L)), kw
        assert torch.all(logp == 0), kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top_p,top_k,temperature", CASES + [(0.5, 3, 0.5)])
def test_logp_is_the_truncated_log_probability(device, dtype, top_p, top_k, temperature):
    torch.manual_seed(5)
    B, L, V = 3, 11, 300
    logits = (torch.randn(B, L, V) * 3).to(dtype)
    xt = torch.full((B, L), V - 1)
    xt[:, ::4] = 2  # carried over: logp 0
    tokens, logp = ops.masked_sample(
        logits.to(device),
        xt.to(device),
        V - 1,
        num_samples=6,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        generator=gen(4, device),
    )
    probs = reference.masked_sample_probs(logits, V - 1, temperature, top_p, top_k)  # [B, L, V]
    picked = probs.unsqueeze(1).expand(B, 6, L, V).gather(-1, tokens.cpu()[..., None])[..., 0]
    masked = (xt == V - 1).unsqueeze(1).expand(B, 6, L)
    assert torch.all(picked[masked] > 0)  # every drawn token is in the kept set
    torch.testing.assert_close(logp.cpu()[masked], picked[masked].log().float(), rtol=0, atol=1e-5)
    assert torch.all(logp.cpu()[~masked] == 0)


def test_tail_inside_the_kept_set_is_exact(device):
    # One top token and 200000 tokens at 1e-9 of it (2e-4 of the mass, all tied): top_p = 0.99995
    # needs the tail, so all of it is kept and drawn at its true rate; top_p = 0.999 drops it.
    V, rows_, K = 200_002, 4, 100_000
    logits = torch.full((rows_, 1, V), math.log(1e-9))
    logits[..., 0] = 0.0
    xt = torch.full((rows_, 1), V - 1, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(device), xt, V - 1, num_samples=K, top_p=0.99995, generator=gen(2, device)
    )
    p_tail = reference.masked_sample_probs(logits, V - 1, 1.0, 0.99995)[0, 0, 1:].sum().item()
    n = rows_ * K
    expected, sd = n * p_tail, math.sqrt(n * p_tail * (1 - p_tail))
    hits = (tokens != 0).sum().item()
    assert expected > 50
    assert abs(hits - expected) < 5 * sd, f"{hits} tail draws, expected {expected:.0f} +- {sd:.0f}"
    tokens, logp = ops.masked_sample(
        logits.to(device), xt, V - 1, num_samples=1000, top_p=0.999, generator=gen(2, device)
    )
    assert torch.all(tokens == 0) and torch.all(logp == 0)


def test_large_vocabulary_blocks_are_pruned_correctly(device_isa):
    device = device_isa
    # V = 50258 spans many sampling blocks: the kept set is found from the block maxima. The
    # draws' log-probabilities and kept-set membership match the reference on every row.
    # Row 1 is peaked (a few tokens far above a flat bulk, as a trained model's): most blocks fall
    # below the threshold. top_p alone takes the sampled bracket on these rows.
    torch.manual_seed(7)
    B, L, V = 2, 3, 50258
    logits = torch.randn(B, L, V) * 2.5
    logits[1, :, torch.randint(0, V - 1, (30,))] += 9.0
    xt = torch.full((B, L), V - 1)
    for kw in (
        {"top_p": 0.9},
        {"top_p": 0.3},
        {"top_p": 0.995},
        {"top_k": 50},
        {"top_k": 5000},
        {"top_p": 0.5, "top_k": 300},
    ):
        tokens, logp = ops.masked_sample(
            logits.to(device), xt.to(device), V - 1, num_samples=64, generator=gen(1, device), **kw
        )
        probs = reference.masked_sample_probs(logits, V - 1, 1.0, **{"top_p": 1.0, **kw})
        picked = probs.unsqueeze(1).expand(B, 64, L, V).gather(-1, tokens.cpu()[..., None])[..., 0]
        assert torch.all(picked > 0), kw
        torch.testing.assert_close(logp.cpu(), picked.log().float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("peaked", [False, True], ids=["flat", "peaked"])
def test_top_p_law_at_large_vocabulary(device_isa, peaked):
    # V = 50258: the CPU kernel brackets the threshold from its sample, so the kept mass of each
    # block comes from the bracket pass (the mass above the bracket plus the bracketed tokens at or
    # above the threshold). Draws counted by 1000-token group fit the reference's group masses.
    device = device_isa
    V, K, G = 50258, 40000, 1000
    g = torch.Generator().manual_seed(11)
    # A ramp across the vocabulary, so that truncation takes more from some groups than others.
    logits = torch.randn(1, 2, V, generator=g) * 2.5 + torch.linspace(-3.0, 3.0, V)
    if peaked:
        logits[0, :, torch.randint(0, V - 1, (40,), generator=g)] += 8.0
    xt = torch.full((1, 2), V - 1, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(device), xt, V - 1, num_samples=K, top_p=0.9, generator=gen(5, device)
    )
    probs = reference.masked_sample_probs(logits, V - 1, 1.0, 0.9)
    groups = (V + G - 1) // G
    for r in range(2):
        counts = torch.bincount(tokens.cpu()[0, :, r] // G, minlength=groups).double()
        want = torch.zeros(groups, dtype=torch.float64).index_add_(
            0, torch.arange(V) // G, probs[0, r]
        )
        stat, df = chi_square(counts, want)
        assert stat < chi_square_bound(df), f"row {r}: chi2 {stat:.1f} with {df} df"
        # The untruncated law, grouped the same way, is rejected: the test sees the truncation.
        plain = torch.zeros(groups, dtype=torch.float64).index_add_(
            0, torch.arange(V) // G, reference.masked_sample_probs(logits, V - 1, 1.0)[0, r]
        )
        assert chi_square(counts, plain)[0] > chi_square_bound(df)


def off_grid_rows(V=5000):
    """[1, 4, V] logits whose mass sits in seven tokens at odd columns (-20 elsewhere): the CPU
    kernel's strided sample (every 4th column here) never sees them."""
    x = torch.full((1, 4, V), -20.0)
    heavy = {1: 12.0, 3: 10.0, 5: 10.5, 7: 9.7, 9: 11.0, 11: 9.9, 4093: 10.2}
    for r in range(4):
        for i, v in heavy.items():
            x[0, r, i] = v + 0.1 * r * (i % 3)
    return x


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_when_the_sample_misses_the_head(device_isa, top_p):
    # The CPU kernel brackets the top-p threshold from a strided sample of the row, then checks the
    # bracket exactly; here the sample misses every heavy token, the check fails, and probe rounds
    # find the threshold instead. The law and the log-probabilities must not depend on the route.
    device = device_isa
    V, K = 5000, 20000
    logits = off_grid_rows(V)
    xt = torch.full((1, 4), V - 1, device=device)
    tokens, logp = ops.masked_sample(
        logits.to(device), xt, V - 1, num_samples=K, top_p=top_p, generator=gen(4, device)
    )
    probs = reference.masked_sample_probs(logits, V - 1, 1.0, top_p)
    counts = counts_of(tokens, V)
    for r in range(4):
        kept = probs[0, r] > 0
        assert counts[0, r, ~kept].sum() == 0
        assert top_p < 0.9 or kept.sum() >= 5  # a law with several outcomes to fit
        if kept.sum() > 1:
            stat, df = chi_square(counts[0, r, kept], probs[0, r, kept])
            assert stat < chi_square_bound(df), f"row {r}: chi2 {stat:.1f} with {df} df"
    picked = probs.unsqueeze(1).expand(1, K, 4, V).gather(-1, tokens.cpu()[..., None])[..., 0]
    torch.testing.assert_close(logp.cpu(), picked.log().float(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- torch integration, bad input


def test_opcheck(device):
    logits = torch.randn(2, 5, 7, device=device)
    xt = torch.full((2, 5), 6, device=device)
    xt[0, 0] = 1
    for kw in ({"top_p": 0.7}, {"top_k": 2}, {"top_p": 0.5, "top_k": 3, "num_samples": 3}):
        torch.library.opcheck(torch.ops.edlm.masked_sample.default, (logits, xt, 6), kw)


def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True)
    def step(logits, xt):
        return ops.masked_sample(logits * 2.0, xt, 6, num_samples=2, top_p=0.8, top_k=3)

    logits = torch.randn(2, 5, 7, device=device)
    xt = torch.full((2, 5), 6, device=device)
    torch.manual_seed(0)
    tokens, logp = step(logits, xt)
    torch.manual_seed(0)
    want = ops.masked_sample(logits * 2.0, xt, 6, num_samples=2, top_p=0.8, top_k=3)
    assert tokens.shape == (2, 2, 5) and torch.equal(tokens, want[0])
    torch.testing.assert_close(logp, want[1])


def test_bad_values(device):
    logits = torch.randn(2, 3, 5, device=device)
    xt = torch.full((2, 3), 4, device=device)
    for top_p, shown in ((0.0, "0"), (-0.5, "-0.5"), (1.5, "1.5"), (float("nan"), "nan")):
        with pytest.raises(
            RuntimeError, match=rf"masked_sample: top_p must be in \(0, 1\].*{shown}"
        ):
            ops.masked_sample(logits, xt, 4, top_p=top_p)
    with pytest.raises(
        RuntimeError, match=r"masked_sample: top_k must be >= 0 \(0 = off\), got -1"
    ):
        ops.masked_sample(logits, xt, 4, top_k=-1)


# ---------------------------------------------------------------- edlm.sample


def test_sample_draws_the_truncated_law():
    # A denoiser that ignores xt: each position's token is drawn once, from the truncated law
    # (a plain step, or final="sample"), whatever step reveals it. 4000 rows per position.
    V, L, B = 6, 3, 4000
    base = torch.tensor([[2.0, 1.0, 1.0, 0.0, -1.0], [0.0, 0.5, 1.5, 0.2, 0.1], [1.0] * 5])
    logits = torch.cat([base, torch.full((L, 1), float("-inf"))], -1)  # [L, V], mask last

    def denoiser(xt, t):
        return logits.expand(xt.shape[0], L, V)

    for kw in ({"top_p": 0.8}, {"top_k": 2}, {"top_p": 0.6, "top_k": 3}):
        x = edlm.sample(
            denoiser,
            batch_size=B,
            length=L,
            mask_id=V - 1,
            steps=4,
            final="sample",
            generator=gen(0),
            **kw,
        )
        probs = reference.masked_sample_probs(logits[None], V - 1, 1.0, **{"top_p": 1.0, **kw})
        for pos in range(L):
            counts = torch.bincount(x[:, pos], minlength=V)
            stat, df = chi_square(counts, probs[0, pos])
            if df == 0:  # one kept token: every draw is it
                assert counts[probs[0, pos] > 0].item() == B, (kw, pos)
            else:
                assert stat < chi_square_bound(df), (kw, pos, stat)


def test_edlm_sample_with_truncation_runs_and_top_k_1_is_greedy():
    from toy import MASK, L, ToyDenoiser

    energy = lambda x0, xt, t, logp: x0.float().sum(-1)
    den = ToyDenoiser()
    edlm_k3 = dict(batch_size=5, length=L, mask_id=MASK, steps=6, energy=energy, num_candidates=3)
    x, stats = edlm.sample(den, **edlm_k3, top_p=0.7, top_k=2, generator=gen(1), return_stats=True)
    assert x.shape == (5, L) and torch.all(x != MASK) and stats["is_steps"] > 0
    # top_k = 1: every candidate is the denoiser's argmax, so all K candidates are one sequence
    # and the weights are equal: ESS = K exactly.
    x, stats = edlm.sample(den, **edlm_k3, top_k=1, generator=gen(2), return_stats=True)
    torch.testing.assert_close(stats["ess"], torch.full_like(stats["ess"], 3.0))
    with pytest.raises(ValueError, match=r"sample: top_p must be in \(0, 1\], got 0"):
        edlm.sample(den, batch_size=1, length=L, mask_id=MASK, steps=2, top_p=0.0)
    with pytest.raises(ValueError, match=r"sample: top_k must be >= 0 \(0 = off\), got -3"):
        edlm.sample(den, batch_size=1, length=L, mask_id=MASK, steps=2, top_k=-3)
