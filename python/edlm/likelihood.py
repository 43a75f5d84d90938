"""Likelihood: MDLM's continuous-time NELBO (an upper bound on the NLL; EDLM.md section 1), and the
EDLM paper's likelihood formula with the log Z estimators T_n / U_n (Theorem 1 of Xu et al. 2025;
EDLM.md section 4), which is an estimate, not a bound: `paper_estimate` says why.
"""

from __future__ import annotations

import math

import torch

from . import ops, schedule

__all__ = [
    "check_eval",
    "evaluate_likelihood",
    "log_z_estimates",
    "nelbo",
    "paper_estimate",
    "summarize",
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
    """Whether the energy declares Z(xt) = 1 exactly (`self_normalized`, as the carry-over AR
    energy does: p(x0|xt) is then the AR conditional over the masked positions)."""
    return bool(getattr(energy, "self_normalized", False))


# --- the estimators ---------------------------------------------------------------------------


def check_inputs(op: str, denoiser, energy, x: torch.Tensor) -> int:
    """The checks every estimator makes (x int64 [B, L] without the mask id, models in eval
    mode); returns the mask id."""
    if x.dim() != 2 or x.dtype != torch.int64:
        raise ValueError(f"{op}: x must be int64 [B, L], got {x.dtype} {list(x.shape)}")
    mask_id = denoiser.mask_id
    if bool((x == mask_id).any()):  # sync point (evaluation only)
        raise ValueError(f"{op}: the data contains the mask id {mask_id}")
    check_eval(denoiser, "denoiser")
    if energy is not None:
        check_eval(energy, "energy")
    return mask_id


def check_eval(model, what: str) -> None:
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
    xt, masked = schedule.forward_mask(x0, t, noise, denoiser.mask_id)
    return x0, xt, t, masked


def in_chunks(fn, n: int, size: int):
    """torch.cat of fn(slice) over [0, n) in slices of `size` rows (bounds every network call)."""
    return torch.cat([fn(slice(i, min(i + size, n))) for i in range(0, n, size)])


def _terms(denoiser, x, num_t, energy, num_is, batch_size, generator) -> dict:
    if num_t < 1:
        raise ValueError(f"nelbo: num_t must be >= 1, got {num_t}")
    mask_id = check_inputs("nelbo", denoiser, energy, x)
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
        e_prop = in_chunks(lambda s: energy(cand[s], xt_n[s], t_n[s], prop_logp[s]), r * n, size)
        lo, hi = log_z_estimates(e_prop.view(r, n))
        return torch.stack([nll, nll + e_data + lo, nll + e_data + hi], 1)

    with torch.no_grad():
        terms = in_chunks(chunk, R, size)  # [R, 1 or 3]
    # A row with nothing masked has p(x0 | xt) = 1: its term is 0 exactly (the estimators agree
    # there only up to rounding, since every proposal draw is x0 itself).
    terms = torch.where(masked.any(-1, keepdim=True), terms, 0.0)
    per_seq = (terms / t.double()[:, None]).view(B, num_t, -1).mean(1)  # [B, 1 or 3]
    out = {"mdlm": per_seq[:, 0]}
    if energy is not None:
        out.update(paper_t=per_seq[:, 1], paper_u=per_seq[:, 2], z_exact=z_one)
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


def paper_estimate(
    denoiser,
    energy,
    x: torch.Tensor,
    *,
    num_t: int = 8,
    num_is: int = 16,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """The EDLM paper's likelihood formula per sequence (EDLM.md section 4; not a bound, see the
    note below), with MDLM's NELBO on the same draws.

    The NELBO above with the factorized denoising log-likelihood sum_{l masked} log mu(x0_l | xt)
    replaced by that of the joint p(x0 | xt) = mu(x0 | xt) exp(-E(x0, xt, t)) / Z(xt):

        NLL(x0) = E_{t, xt} [ (1/t) ( sum_{l: xt_l = m} -log mu(x0_l | xt) + E(x0, xt, t) + log Z(xt) ) ]

    (the term is 0 where nothing is masked), with log Z(xt) estimated from `num_is` draws
    x^(j) ~ mu(. | xt) per noisy row (`log_z_estimates`): "paper_t" uses T_n (low on average),
    "paper_u" uses U_n (high on average, as the paper reports it). For a self-normalized energy
    (the carry-over AR one) Z = 1 exactly: no draws are made, paper_t == paper_u, and "z_exact"
    is True.

    Note: this is the formula of the EDLM paper. It is exact for a factorized denoiser (E = 0:
    MDLM's NELBO), but for a joint p(x0 | xt) the continuous-time ELBO of the sampler it describes
    involves the per-position marginals of p, not the joint, and the formula is not a bound in
    general (for two always-equal tokens it gives half the data entropy). With the carry-over AR
    energy its expectation is (1 - EPS) times the AR model's NLL.

    energy(x0 [N, L], xt [N, L], t [N], proposal_logp [N]) -> E [N], lower = more likely; it is
    called with at most batch_size rows. Returns {"mdlm", "paper_t", "paper_u"}: float64 [B] nats
    per sequence, and "z_exact": bool.
    """
    if energy is None:
        raise ValueError("paper_estimate: an energy is needed (use nelbo for MDLM alone)")
    return _terms(denoiser, x, num_t, energy, num_is, batch_size, generator)


def summarize(per_seq: torch.Tensor, L: int, prefix: str) -> dict:
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
    """Likelihoods over a dataset: MDLM's NELBO (a bound) and, with an energy, the EDLM paper's
    formula (`paper_estimate`, both log Z estimates; not a bound) on the same noisy draws.

    dataset: a PackedDataset (its first `num_sequences` blocks in its own order; None: all) or
    an int64 Tensor [N, L]. batch_size bounds the rows (sequence x t draw, or proposal) of every
    network call. Models must be in eval mode (`checkpoint.load_model` returns them so).

    Returns a flat dict: num_sequences, length, num_t, and for each of "nelbo" (MDLM) and, with
    an energy, "paper_t" (log Z by T_n) and "paper_u" (by U_n, as the paper reports it):
    <name>_per_token (mean, nats per token), <name>_se (its standard error across
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
    result.update(summarize(torch.cat(parts["mdlm"]), L, "nelbo"))
    if energy is not None:
        result.update(summarize(torch.cat(parts["paper_t"]), L, "paper_t"))
        result.update(summarize(torch.cat(parts["paper_u"]), L, "paper_u"))
        result["num_is"] = 0 if z_exact else num_is
        result["log_z"] = (
            "exact: carry-over AR energy, Z = 1"
            if z_exact
            else f"estimated from {num_is} proposal draws per noisy sequence (T_n low, U_n high)"
        )
    return result
