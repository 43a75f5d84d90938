"""Infilling templates and text longer than the model (issue 15, parts 2 and 3): the template's
fixed tokens never change and the filled positions follow the source's exact conditional (the
austen-oracle source, its exact denoiser and the source as the energy); semi-autoregressive blocks
keep every token once drawn, respect prompts anywhere, and are deterministic."""

import itertools

import numpy as np
import pytest
import torch
from statcheck import chi_square, chi_square_bound

import edlm
from edlm.checkpoint import bundled, load_energy, load_model
from edlm.cli import main
from edlm.corpora import austen_oracle
from edlm.oracle import OracleDenoiser
from edlm.tokenizer import CharTokenizer, encode_template, load_tokenizer

MASK = 27


def test_encode_template_char_and_bpe():
    tok = CharTokenizer()
    ids = encode_template(tok, "it__ a<mask:3>b")
    assert ids == tok.encode("it") + [None, None] + tok.encode(" a") + [None] * 3 + tok.encode("b")
    assert encode_template(tok, "ab##c", marker="#") == tok.encode("ab") + [
        None,
        None,
    ] + tok.encode("c")
    gpt2 = load_tokenizer("gpt2")
    ids = encode_template(gpt2, "Hello<mask:2> world")
    assert ids == gpt2.encode("Hello") + [None, None] + gpt2.encode(" world")
    with pytest.raises(ValueError, match="marker must be one visible character"):
        encode_template(tok, "a_b", marker="__")


def _prompt(template, rows, length):
    ids = encode_template(CharTokenizer(), template)
    p = torch.full((rows, length), MASK, dtype=torch.long)
    for pos, i in enumerate(ids):
        if i is not None:
            p[:, pos] = i
    return p


def _conditional(source, prompt_row):
    """The source's exact law of the free positions of one row, over all fillings."""
    free = (prompt_row == MASK).nonzero().flatten().tolist()
    fills = torch.tensor(list(itertools.product(range(27), repeat=len(free))))
    x = prompt_row.expand(len(fills), -1).clone()
    x[:, free] = fills
    p = source.log_prob(x).exp()
    return free, fills, p / p.sum()


def test_template_fill_follows_the_exact_conditional():
    """One free position: MDLM with the exact denoiser draws exactly the source's conditional.
    Two adjacent ones: MDLM's factorized step misses their dependence, EDLM with the source as the
    energy closes most of the gap as k grows."""
    source = austen_oracle()
    den = OracleDenoiser(source, 6)
    N = 40_000
    one = _prompt("a th_ ", N, 6)
    x = edlm.sample(
        den,
        batch_size=N,
        length=6,
        mask_id=MASK,
        steps=4,
        prompt=one,
        generator=torch.Generator().manual_seed(0),
        final="sample",
    )
    assert torch.equal(x[:, [0, 1, 2, 3, 5]], one[:, [0, 1, 2, 3, 5]])  # fixed tokens kept
    _, _, p = _conditional(source, one[0])
    stat, df = chi_square(torch.bincount(x[:, 4], minlength=27), p)
    assert stat < chi_square_bound(df), (stat, df)

    two = _prompt("a t__ ", N, 6)
    free, _, p = _conditional(source, two[0])
    tv = {}
    for k in (1, 32):
        x = edlm.sample(
            den,
            batch_size=N,
            length=6,
            mask_id=MASK,
            steps=1,
            prompt=two,
            energy=load_energy("oracle:", mask_id=MASK, vocab_size=28),
            num_candidates=k,
            final="sample",
            generator=torch.Generator().manual_seed(k),
        )
        assert torch.equal(x[:, [0, 1, 2, 5]], two[:, [0, 1, 2, 5]])
        code = x[:, free[0]] * 27 + x[:, free[1]]
        emp = torch.bincount(code, minlength=729).double() / N
        tv[k] = 0.5 * (emp - p).abs().sum().item()
    assert tv[1] > 0.1  # the product of marginals is far from the joint conditional
    assert tv[32] < 0.4 * tv[1]


def test_cli_template_marks_the_generated_spans(capsys):
    code = main(
        [
            "sample",
            "--template",
            "it is a truth ____ acknowledged",
            "--num",
            "2",
            "--steps",
            "8",
            "--length",
            "40",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    texts = [
        b.split("\n", 1)[1].split("\n--- ")[0].rstrip("\n") for b in out.split("--- sample ")[1:]
    ]
    for t in texts:
        assert t.startswith("it is a truth [") and "] acknowledged[" in t and t.endswith("]")
        assert len(t) == 40 + 4  # two bracketed spans
    for args, msg in (
        (["--template", "x" * 300], "--template is 300 tokens, longer than the length 256"),
        (["--template", "a_", "--prompt", "a"], "--template and --prompt both fix tokens"),
        (["--template", "a_", "--marker", ""], "--marker '': template: the marker must be"),
        (
            ["--length", "600", "--stride", "300"],
            "--stride 300 is longer than the model's context 256",
        ),
        (
            ["--denoiser", "oracle", "--stride", "3"],
            "--stride: the oracle denoiser takes any length",
        ),
    ):
        with pytest.raises(SystemExit) as info:
            main(["sample", "--num", "1", "--steps", "2", *args])
        assert str(info.value.code).startswith(f"edlm sample: {msg}"), info.value.code


class Recorder(torch.nn.Module):
    def __init__(self, den):
        super().__init__()
        self.den, self.cfg, self.mask_id, self.inputs = den, den.cfg, den.mask_id, []

    def forward(self, xt, t):
        self.inputs.append(xt.clone())
        return self.den(xt, t)


@pytest.fixture(scope="module")
def tiny():
    return load_model(bundled("denoiser-tiny"), kind="denoiser")[0]


def test_semi_autoregressive_keeps_every_token_once_drawn(tiny):
    rec = Recorder(tiny)
    ctx, stride, N = 256, 100, 650
    prompt = torch.full((2, N), MASK, dtype=torch.long)
    prompt[:, 400:405] = torch.tensor(CharTokenizer().encode("hello"))  # beyond the first window
    x, stats = edlm.sample(
        rec,
        batch_size=2,
        length=N,
        mask_id=MASK,
        steps=4,
        prompt=prompt,
        stride=stride,
        generator=torch.Generator().manual_seed(0),
        return_stats=True,
    )
    windows, pos = [(0, ctx)], ctx
    while pos < N:
        new = min(stride, N - pos)
        windows.append((pos + new - ctx, pos + new))
        pos += new
    assert x.shape == (2, N) and (x != MASK).all() and stats["blocks"] == len(windows) == 5
    assert torch.equal(x[:, 400:405], prompt[:, 400:405])
    # each window's first call sees the text so far (all of the window but its new tokens),
    # and that text is what the final output holds there: nothing drawn is ever redrawn
    firsts, prev = [], None  # a call that does not extend the one before starts a window
    for xt in rec.inputs:
        if prev is None or (xt[prev != MASK] != prev[prev != MASK]).any():
            firsts.append(xt)
        prev = xt
    assert len(firsts) == len(windows)
    prev_hi = 0
    for (lo, hi), first in zip(windows, firsts):
        known = first != MASK
        assert torch.equal(first[known], x[:, lo:hi][known])
        assert known[:, : max(prev_hi - lo, 0)].all()  # the overlap with what came before
        prev_hi = hi
    again = edlm.sample(
        tiny,
        batch_size=2,
        length=N,
        mask_id=MASK,
        steps=4,
        prompt=prompt,
        stride=stride,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(x, again)


def test_semi_autoregressive_with_an_energy_and_errors(tiny):
    ar = load_energy(f"ar:{bundled('ar-tiny')}", mask_id=MASK, vocab_size=28)
    x, stats = edlm.sample(
        tiny,
        batch_size=2,
        length=300,
        mask_id=MASK,
        steps=4,
        energy=ar,
        num_candidates=2,
        generator=torch.Generator().manual_seed(1),
        return_stats=True,
    )
    assert x.shape == (2, 300) and stats["blocks"] == 2 and stats["is_steps"] >= 2
    assert stats["ess"].shape[1] == 2
    for stride, msg in ((0, "stride must be in"), (257, "stride must be in")):
        with pytest.raises(ValueError, match=msg):
            edlm.sample(tiny, batch_size=1, length=300, mask_id=MASK, steps=2, stride=stride)
    with pytest.raises(ValueError, match="context must be >= 1"):
        edlm.sample(tiny, batch_size=1, length=300, mask_id=MASK, steps=2, context=0)
    np.testing.assert_equal(  # a context as long as the text: one window, no blocks
        edlm.sample(
            tiny,
            batch_size=1,
            length=300,
            mask_id=MASK,
            steps=2,
            context=300,
            generator=torch.Generator().manual_seed(2),
        ).shape,
        (1, 300),
    )
