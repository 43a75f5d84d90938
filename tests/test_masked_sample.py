"""Tests of edlm.ops.masked_sample against edlm.reference: exact semantics, distribution
(goodness of fit that a wrong temperature, sign, tail, mask draw or row mix-up fails),
determinism, batch invariance, awkward sizes and bad input."""

import math
import re

import pytest
import torch
from devices import HAS_CUDA
from statcheck import chi_square, chi_square_bound

from edlm import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def empirical(tokens, V):
    """Counts of each token id over the K draws: tokens [B, K, L] -> counts [B, L, V]."""
    B, K, L = tokens.shape
    one_hot = torch.zeros(B, L, V, dtype=torch.float64)
    one_hot.scatter_add_(2, tokens.permute(0, 2, 1).cpu(), torch.ones(B, L, K, dtype=torch.float64))
    return one_hot


# ---------------------------------------------------------------- exact semantics


@pytest.mark.parametrize("dtype", DTYPES)
def test_carry_over_and_logp_match_reference(device, dtype):
    torch.manual_seed(0)
    B, L, V, K, mask_id = 3, 97, 111, 4, 110
    logits = (torch.randn(B, L, V) * 3).to(dtype).to(device)
    xt = torch.randint(0, V - 1, (B, L))
    xt[torch.rand(B, L) < 0.6] = mask_id
    xt = xt.to(device)
    tokens, logp = ops.masked_sample(logits, xt, mask_id, num_samples=K, generator=gen(1, device))
    assert tokens.shape == (B, K, L) and tokens.dtype == torch.int64
    assert logp.shape == (B, K, L) and logp.dtype == torch.float32
    masked = (xt == mask_id).unsqueeze(1).expand(B, K, L)
    # Carry-over: unmasked positions keep their token and have logp 0.
    assert torch.equal(tokens[~masked], xt.unsqueeze(1).expand(B, K, L)[~masked])
    assert torch.all(logp[~masked] == 0)
    # Revealed positions: a real token (never the mask) and its exact log-probability.
    drawn = tokens[masked]
    assert torch.all((drawn >= 0) & (drawn < V) & (drawn != mask_id))
    ref_logp = reference.masked_sample_probs(logits.cpu(), mask_id).log()  # [B, L, V]
    expect = ref_logp.unsqueeze(1).expand(B, K, L, V).gather(-1, tokens.cpu()[..., None])[..., 0]
    torch.testing.assert_close(
        logp.cpu()[masked.cpu()], expect[masked.cpu()].float(), rtol=0, atol=2e-5
    )


def test_temperature_scales_logp(device):
    torch.manual_seed(1)
    logits = torch.randn(2, 8, 50).to(device)
    xt = torch.full((2, 8), 49, device=device)
    for temperature in (0.5, 2.0):
        tokens, logp = ops.masked_sample(
            logits, xt, 49, num_samples=3, temperature=temperature, generator=gen(0, device)
        )
        ref = reference.masked_sample_probs(logits.cpu(), 49, temperature).log()
        expect = ref.unsqueeze(1).expand(2, 3, 8, 50).gather(-1, tokens.cpu()[..., None])[..., 0]
        torch.testing.assert_close(logp.cpu(), expect.float(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("mask_id", [0, 55, 110])
def test_mask_column_is_excluded_wherever_it_is(device_isa, mask_id):
    device = device_isa
    # The mask logit is by far the largest: a sampler that forgets to exclude it draws only it.
    V = 111
    logits = torch.zeros(1, 64, V)
    logits[..., mask_id] = 50.0
    logits = logits.to(device)
    xt = torch.full((1, 64), mask_id, device=device)
    tokens, logp = ops.masked_sample(logits, xt, mask_id, num_samples=32, generator=gen(3, device))
    assert not torch.any(tokens == mask_id)
    torch.testing.assert_close(logp, torch.full_like(logp, -math.log(V - 1)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("V", [2, 3, 111, 50258])
@pytest.mark.parametrize("L", [1, 97])
def test_awkward_sizes(device, V, L):
    torch.manual_seed(V + L)
    B, K = 2, 3
    logits = torch.randn(B, L, V, device=device)
    xt = torch.full((B, L), V - 1, device=device)
    tokens, logp = ops.masked_sample(logits, xt, V - 1, num_samples=K, generator=gen(0, device))
    assert tokens.shape == (B, K, L)
    assert torch.all((tokens >= 0) & (tokens < V - 1))
    if V == 2:  # one real token: always drawn, with probability 1
        assert torch.all(tokens == 0) and torch.all(logp == 0)
    assert torch.all(logp <= 0) and torch.all(torch.isfinite(logp))


def test_none_masked_is_identity(device):
    xt = torch.randint(0, 10, (3, 7), device=device)
    logits = torch.full((3, 7, 11), float("nan"), device=device)  # never read: nothing is masked
    tokens, logp = ops.masked_sample(logits, xt, 10, num_samples=2)
    assert torch.equal(tokens, xt.unsqueeze(1).expand(3, 2, 7))
    assert torch.all(logp == 0)


def test_one_hot_rows(device):
    V = 40
    target = torch.randint(0, V - 1, (4, 9))
    logits = torch.full((4, 9, V), float("-inf"))
    logits.scatter_(2, target[..., None], 0.0)
    xt = torch.full((4, 9), V - 1)
    tokens, logp = ops.masked_sample(logits.to(device), xt.to(device), V - 1, num_samples=5)
    assert torch.equal(tokens.cpu(), target.unsqueeze(1).expand(4, 5, 9))
    assert torch.all(logp == 0)


# ---------------------------------------------------------------- determinism


def test_same_generator_state_same_output(device):
    logits = torch.randn(3, 50, 300, device=device)
    xt = torch.full((3, 50), 299, device=device)
    a = ops.masked_sample(logits, xt, 299, num_samples=4, generator=gen(7, device))
    b = ops.masked_sample(logits, xt, 299, num_samples=4, generator=gen(7, device))
    c = ops.masked_sample(logits, xt, 299, num_samples=4, generator=gen(8, device))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # The generator advances: two calls on one generator differ.
    g = gen(7, device)
    first = ops.masked_sample(logits, xt, 299, num_samples=4, generator=g)[0]
    second = ops.masked_sample(logits, xt, 299, num_samples=4, generator=g)[0]
    assert not torch.equal(first, second)
    # The default generator follows torch.manual_seed.
    torch.manual_seed(11)
    d = ops.masked_sample(logits, xt, 299, num_samples=4)[0]
    torch.manual_seed(11)
    assert torch.equal(d, ops.masked_sample(logits, xt, 299, num_samples=4)[0])


def test_row_output_depends_only_on_its_own_inputs(device):
    torch.manual_seed(0)
    B, L, V = 4, 33, 500
    logits = torch.randn(B, L, V, device=device)
    xt = torch.full((B, L), V - 1, device=device)
    xt[:, ::3] = 7
    base = ops.masked_sample(logits, xt, V - 1, num_samples=3, generator=gen(5, device))
    # Change every other row: rows 1 and 3 must not move.
    logits2, xt2 = logits.clone(), xt.clone()
    logits2[0] = torch.randn(L, V, device=device)
    logits2[2] = -logits2[2]
    xt2[0, :] = V - 1
    other = ops.masked_sample(logits2, xt2, V - 1, num_samples=3, generator=gen(5, device))
    for b in (1, 3):
        assert torch.equal(base[0][b], other[0][b]) and torch.equal(base[1][b], other[1][b])
    # Fewer rows, or fewer samples: the shared prefix is unchanged.
    head = ops.masked_sample(logits[:2], xt[:2], V - 1, num_samples=3, generator=gen(5, device))
    assert torch.equal(head[0], base[0][:2])
    fewer = ops.masked_sample(logits, xt, V - 1, num_samples=2, generator=gen(5, device))
    assert torch.equal(fewer[0], base[0][:, :2])


def test_non_contiguous_inputs(device):
    logits = torch.randn(20, 3, 30, device=device).transpose(0, 1)  # [3, 20, 30], strided
    xt = torch.full((20, 3), 29, device=device).t()
    a = ops.masked_sample(logits, xt, 29, num_samples=2, generator=gen(1, device))
    b = ops.masked_sample(
        logits.contiguous(), xt.contiguous(), 29, num_samples=2, generator=gen(1, device)
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_column_strided_views_are_read_in_place(device):
    # A slice of the vocabulary at an odd offset (unit column stride, odd row stride): the same
    # draws as its contiguous copy, and no copy made (a copy would show as aten::contiguous).
    torch.manual_seed(2)
    wide = torch.randn(3, 11, 131, device=device)
    logits = wide[:, :, 5:106]  # [3, 11, 101], strides (1441, 131, 1), storage offset 5
    xt = torch.full((3, 11), 100, device=device)
    xt[:, ::4] = 3
    want = ops.masked_sample(logits.contiguous(), xt, 100, num_samples=3, generator=gen(4, device))
    with torch.profiler.profile() as prof:
        got = ops.masked_sample(logits, xt, 100, num_samples=3, generator=gen(4, device))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    names = {e.name for e in prof.events()}
    assert "edlm::masked_sample" in names and "aten::contiguous" not in names, sorted(names)
    # A layout whose columns are not adjacent is copied first: the same draws again.
    cols = logits.contiguous().transpose(1, 2).contiguous().transpose(1, 2)  # stride(-1) = 11
    with torch.profiler.profile() as prof:
        again = ops.masked_sample(cols, xt, 100, num_samples=3, generator=gen(4, device))
    assert torch.equal(again[0], want[0]) and torch.equal(again[1], want[1])
    assert "aten::contiguous" in {e.name for e in prof.events()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_rows_at_any_address_draw_the_same_tokens(device, dtype):
    # The README's determinism claim: the same logits and seed give the same tokens wherever
    # the rows lie in memory. Storage offsets 1..7 put every row at another 16-byte phase (and
    # V = 1001 puts consecutive rows at different phases already).
    torch.manual_seed(5)
    B, L, V = 2, 6, 1001
    logits = (torch.randn(B, L, V) * 3).to(dtype).to(device)
    xt = torch.full((B, L), V - 1, device=device)
    want = ops.masked_sample(logits, xt, V - 1, num_samples=8, generator=gen(6, device))
    for offset in range(1, 8):
        buf = torch.empty(offset + B * L * V, dtype=dtype, device=device)
        view = buf[offset:].view(B, L, V)
        view.copy_(logits)
        got = ops.masked_sample(view, xt, V - 1, num_samples=8, generator=gen(6, device))
        assert torch.equal(got[0], want[0]), f"offset {offset}"
        assert torch.equal(got[1], want[1]), f"offset {offset}"


# ---------------------------------------------------------------- distribution


def draw_counts(logits, mask_id, K, device, seed, temperature=1.0, dtype=torch.float32):
    B, L, V = logits.shape
    xt = torch.full((B, L), mask_id, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(dtype).to(device),
        xt,
        mask_id,
        num_samples=K,
        temperature=temperature,
        generator=gen(seed, device),
    )
    return empirical(tokens, V)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_goodness_of_fit_per_row(device_isa, dtype, temperature):
    device = device_isa
    # Rows that differ (one favours low ids, one high ids, one flat-ish): each row's draws must
    # fit its own distribution, which a wrong temperature, a flipped sign or mixed rows fail.
    torch.manual_seed(42)
    V, K = 64, 20000
    ramp = torch.linspace(-3, 3, V)
    logits = torch.stack([ramp, -ramp, 1.5 * torch.randn(V)]).unsqueeze(1)  # [3, 1, V]
    logits = logits.to(dtype).float()  # the distribution the kernel sees
    counts = draw_counts(logits, V - 1, K, device, seed=9, temperature=temperature, dtype=dtype)
    probs = reference.masked_sample_probs(logits, V - 1, temperature)
    for b in range(3):
        stat, df = chi_square(counts[b, 0], probs[b, 0])
        assert stat < chi_square_bound(df), f"row {b}: chi2 {stat:.1f} with {df} df"
        # The same draws against the wrong models must fail, so the test has teeth.
        wrong_t = reference.masked_sample_probs(logits, V - 1, temperature * 1.25)[b, 0]
        wrong_sign = reference.masked_sample_probs(-logits, V - 1, temperature)[b, 0]
        other_row = probs[(b + 1) % 3, 0]
        for wrong in (wrong_t, wrong_sign, other_row):
            assert chi_square(counts[b, 0], wrong)[0] > chi_square_bound(df)


def test_large_vocabulary_fit(device_isa):
    device = device_isa
    # V = 50258 crosses many sampling blocks; pooled into 64 bins of ids for the test.
    torch.manual_seed(3)
    V, K = 50258, 4000
    logits = torch.randn(1, 2, V) * 2
    counts = draw_counts(logits, V - 1, K, device, seed=1).sum(1)[0]  # [V]
    probs = reference.masked_sample_probs(logits, V - 1).mean(1)[0]
    bins = torch.arange(V) * 64 // V
    binned_counts = torch.zeros(64, dtype=torch.float64).index_add_(0, bins, counts)
    binned_probs = torch.zeros(64, dtype=torch.float64).index_add_(0, bins, probs)
    stat, df = chi_square(binned_counts, binned_probs)
    assert stat < chi_square_bound(df)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tail_at_1e_minus_9_is_drawn_at_its_true_rate(device_isa, dtype):
    device = device_isa
    # One top token and 200000 tokens at 1e-9 of it: together they hold ~2e-4 of the mass.
    # fp32 Gumbel-max with clamps (EDLM.md trap 6) never draws them; exact sampling does.
    V, rows, K = 200_002, 8, 100_000
    logits = torch.full((rows, 1, V), math.log(1e-9))
    logits[..., 0] = 0.0
    logits = logits.to(dtype)
    xt = torch.full((rows, 1), V - 1, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(device), xt, V - 1, num_samples=K, generator=gen(2, device)
    )
    p_tail = reference.masked_sample_probs(logits, V - 1)[0, 0, 1:].sum().item()
    n = rows * K
    expected, sd = n * p_tail, math.sqrt(n * p_tail * (1 - p_tail))
    hits = (tokens != 0).sum().item()
    assert expected > 100
    assert abs(hits - expected) < 5 * sd, f"{hits} tail draws, expected {expected:.0f} +- {sd:.0f}"
    # The tail draws spread over the tail, not onto a few ids near a block edge.
    tail = tokens[tokens != 0]
    assert tail.unique().numel() > 0.9 * tail.numel()


def test_tail_of_a_single_token(device_isa):
    device = device_isa
    # A single token at 1e-6 relative to the top: 2e6 draws give ~2 +- 1.4 hits; over 5 rows
    # the count is Poisson(10): a sampler that drops it gets 0.
    V, rows, K = 100, 5, 2_000_000
    logits = torch.full((rows, 1, V), -1e4)
    logits[..., 0] = 0.0
    logits[..., 50] = math.log(1e-6)
    xt = torch.full((rows, 1), V - 1, device=device)
    tokens, _ = ops.masked_sample(
        logits.to(device), xt, V - 1, num_samples=K, generator=gen(4, device)
    )
    hits = (tokens == 50).sum().item()
    assert 1 <= hits <= 30
    assert torch.all((tokens == 0) | (tokens == 50))


def test_draws_are_independent_across_samples_and_positions(device):
    # Pairs of draws (sample k, k+1) and (position l, l+1) must be uncorrelated: a shared uniform
    # would make them equal far more often than sum p^2.
    V = 6
    logits = torch.zeros(1, 200, V)
    xt = torch.full((1, 200), V - 1)
    tokens, _ = ops.masked_sample(
        logits.to(device), xt.to(device), V - 1, num_samples=200, generator=gen(0, device)
    )
    tokens = tokens.cpu()
    p_equal = 1 / (V - 1)
    for a, b in ((tokens[:, 1:], tokens[:, :-1]), (tokens[..., 1:], tokens[..., :-1])):
        n = a.numel()
        same = (a == b).sum().item()
        assert abs(same - n * p_equal) < 6 * math.sqrt(n * p_equal * (1 - p_equal))


# ---------------------------------------------------------------- torch integration


def test_opcheck(device):
    logits = torch.randn(2, 5, 7, device=device)
    xt = torch.full((2, 5), 6, device=device)
    xt[0, 0] = 1
    torch.library.opcheck(torch.ops.edlm.masked_sample.default, (logits, xt, 6), {"num_samples": 3})
    torch.library.opcheck(
        torch.ops.edlm.masked_sample.default,
        (logits, xt, 6),
        {"num_samples": 2, "temperature": 0.5},
    )


def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True)
    def step(logits, xt):
        tokens, logp = ops.masked_sample(logits * 2.0, xt, 6, num_samples=2)
        return tokens, logp.sum(-1)

    logits = torch.randn(2, 5, 7, device=device)
    xt = torch.full((2, 5), 6, device=device)
    torch.manual_seed(0)
    tokens, total = step(logits, xt)
    torch.manual_seed(0)
    eager_tokens, eager_logp = ops.masked_sample(logits * 2.0, xt, 6, num_samples=2)
    assert torch.equal(tokens, eager_tokens)
    torch.testing.assert_close(total, eager_logp.sum(-1))


# ---------------------------------------------------------------- bad input


def bad(match, *args, **kwargs):
    with pytest.raises(RuntimeError, match=match):
        ops.masked_sample(*args, **kwargs)


def test_bad_input(device):
    logits = torch.randn(2, 3, 5, device=device)
    xt = torch.full((2, 3), 4, device=device)
    bad(r"masked_sample: logits must be 3-D", logits[0], xt, 4)
    bad(r"masked_sample: xt must be \[2, 3\]", logits, xt[:1], 4)
    bad(r"masked_sample: xt must be int64, got Int", logits, xt.int(), 4)
    bad(
        r"masked_sample: logits must be float32, bfloat16 or float16, got Double",
        logits.double(),
        xt,
        4,
    )
    bad(r"masked_sample: mask_id = 5 is outside \[0, V\) with V = 5", logits, xt, 5)
    bad(r"masked_sample: mask_id = -1", logits, xt, -1)
    bad(r"masked_sample: V must be at least 2", logits[..., :1], torch.zeros_like(xt), 0)
    bad(r"masked_sample: num_samples must be >= 1, got 0", logits, xt, 4, num_samples=0)
    bad(r"masked_sample: temperature must be finite and > 0, got 0", logits, xt, 4, temperature=0.0)
    bad(
        r"masked_sample: temperature must be finite and > 0, got -1",
        logits,
        xt,
        4,
        temperature=-1.0,
    )
    # 1/T or 1/T * log2(e) outside the normal float32 range: NaN from -inf logits otherwise.
    for temperature in (1e-39, 4e-39, 1e38, 1e45, 1e300):
        bad(
            re.escape(f"masked_sample: temperature = {temperature:g} is outside [")
            + r"4\.2\d*e-39, 8\.5\d*e\+37\]",
            logits,
            xt,
            4,
            temperature=temperature,
        )


def test_extreme_temperatures_in_range(device):
    # Just inside the accepted range: T = 1e-38 draws the argmax with probability 1, T = 1e37
    # draws uniformly over the finite real tokens; -inf logits stay impossible at both.
    torch.manual_seed(8)
    V = 300
    logits = torch.randn(4, 9, V)
    logits[:, :, ::7] = float("-inf")
    xt = torch.full((4, 9), V - 1)
    real = logits[..., : V - 1]
    tokens, logp = ops.masked_sample(
        logits.to(device), xt.to(device), V - 1, num_samples=5, temperature=1e-38
    )
    assert torch.equal(tokens.cpu(), real.argmax(-1).unsqueeze(1).expand(4, 5, 9))
    assert torch.all(logp == 0)
    tokens, logp = ops.masked_sample(
        logits.to(device), xt.to(device), V - 1, num_samples=5, temperature=1e37
    )
    assert torch.all(tokens.cpu() % 7 != 0) and torch.all(tokens < V - 1)
    n_finite = torch.isfinite(real[0, 0]).sum().item()
    torch.testing.assert_close(
        logp.cpu(), torch.full((4, 5, 9), -math.log(n_finite)), rtol=0, atol=1e-5
    )


# (column of the bad value, a large logit in its block or not): the first block, a later block (the
# streaming pass, which detects NaN from its sum of exponentials), a later block whose large max
# makes the pass redo the block against its own max, and a block's last partial vector.
BAD_SPOTS = [(3, False), (2600, False), (2600, True), (4998, False)]


@pytest.mark.parametrize("column,redo", BAD_SPOTS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("truncation", [{}, {"top_p": 0.9}, {"top_k": 5}], ids=str)
def test_nan_or_inf_anywhere_in_a_long_row_is_an_error(device_isa, column, redo, value, truncation):
    if device_isa != "cpu":
        pytest.skip("value checks are read on the CPU")
    V = 5000
    logits = torch.randn(2, 3, V)
    logits[1, 1, column] = value
    if redo:
        logits[1, 1, column + 1] = 500.0
    xt = torch.full((2, 3), V - 1)
    bad(r"masked_sample: logits\[1, 1\] contain NaN or \+inf", logits, xt, V - 1, **truncation)


def test_bad_values_cpu():
    # Value checks (read from the tensors): raised on the CPU; on CUDA see the README.
    logits = torch.randn(2, 3, 5)
    xt = torch.full((2, 3), 4)
    xt_bad = xt.clone()
    xt_bad[1, 2] = 9
    bad(r"masked_sample: xt\[1, 2\] = 9 is outside \[0, V\) with V = 5", logits, xt_bad, 4)
    xt_bad[1, 2] = -3
    bad(r"masked_sample: xt\[1, 2\] = -3", logits, xt_bad, 4)
    nan = logits.clone()
    nan[1, 1, 2] = float("nan")
    bad(r"masked_sample: logits\[1, 1\] contain NaN or \+inf", nan, xt, 4)
    nan[1, 1, 2] = float("inf")
    bad(r"masked_sample: logits\[1, 1\] contain NaN or \+inf", nan, xt, 4)
    dead = logits.clone()
    dead[0, 2, :4] = float("-inf")  # only the mask column is finite: nothing to draw
    bad(r"masked_sample: logits\[0, 2\] are -inf for every token but the mask", dead, xt, 4)
    # The same bad rows at unmasked positions are never read: no error.
    xt_clear = xt.clone()
    xt_clear[0, 2] = 1
    xt_clear[1, 1] = 1
    ops.masked_sample(dead, xt_clear, 4)
    ops.masked_sample(nan, xt_clear, 4)


@pytest.mark.skipif(not HAS_CUDA, reason="no GPU or no CUDA kernels built")
def test_cuda_agrees_with_the_cpu_kernel_in_distribution():
    # Different generators, so not draw for draw: the two devices' draws over the same rows fit
    # each other (two-sample chi-square) and carry the same log-probabilities for the same tokens.
    torch.manual_seed(0)
    V, K = 40, 20000
    logits = torch.randn(2, 1, V) * 2
    xt = torch.full((2, 1), V - 1)
    tc, _lc = ops.masked_sample(logits, xt, V - 1, num_samples=K, generator=gen(0))
    tg, lg = ops.masked_sample(
        logits.cuda(), xt.cuda(), V - 1, num_samples=K, generator=gen(0, "cuda")
    )
    for b in range(2):
        a = torch.bincount(tc[b, :, 0], minlength=V).double()
        g = torch.bincount(tg[b, :, 0].cpu(), minlength=V).double()
        keep = (a + g) > 0
        stat = (((a - g) ** 2) / (a + g))[keep].sum().item()
        assert stat < chi_square_bound(int(keep.sum()) - 1)
    ref = reference.masked_sample_probs(logits, V - 1).log()
    expect = ref.unsqueeze(1).expand(2, K, 1, V).gather(-1, tg.cpu()[..., None])[..., 0]
    torch.testing.assert_close(lg.cpu(), expect.float(), rtol=0, atol=2e-5)
