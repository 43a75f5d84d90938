"""Upper bounds on the negative log-likelihood of the T-step sampler as implemented (issue 11; EDLM.md
section 4): the discrete-time ELBO over the reveal times tau, for MDLM and for EDLM with K
importance-sampling candidates (SIR) or with K = infinity.

The sampler draws every position's reveal time tau_l ~ U(0, 1) once; step i (t_i -> t_{i+1} on
`schedule.sampling_grid`) reveals S_i = {l : t_{i+1} <= tau_l < t_i} from a draw of pi_i(. | x_{t_i}),
and the positions left at the end are drawn from mu at t_end (final="sample"). Reveal times do not
depend on the tokens, so p_T(x0) = E_tau prod_i pi_i(x0[S_i] | x_{t_i}) and, by Jensen,

    -log p_T(x0) <= E_tau sum_i -log pi_i(x0[S_i] | x_{t_i}).

pi_i = mu (factorized) on plain steps; on importance-sampling steps it is the S_i-marginal of the
SIR density q_K(x) = K mu(x) E[w(x) / (w(x) + sum_{j=2..K} w(z_j))], z_j ~ mu, w = exp(-E), so

    pi_i(x0[S]) / mu(x0[S]) = K E_{r ~ mu, z ~ mu}[ w(y) / (w(y) + sum_j w(z_j)) ],  y = (x0[S], r)

whose unbiased estimate (m completions r_a, each with its own K - 1 competitors, so that the
average converges to the ratio as m grows; competitors shared across the completions would leave
a Jensen gap over them that no m removes) inside -log gives a term whose expectation is >= the
true one for every K and m: the bound stays a bound. With
K = infinity, pi(x0[S]) = mu(x0[S]) N_S / Z, N_S = E_r[w(x0[S], r)], Z = E_mu[w]: -T_m[log N_S]
(biased high for every m) + U_n[log Z] (biased high as n grows, Theorem 1 of Xu et al.), the
completions shared between the two, which cuts the variance of their difference.
The argmax final step of `edlm.sample` gives every other token probability 0: these bound the
sampler whose last step samples.
"""

from __future__ import annotations

import math

import torch

from . import ops, schedule
from .likelihood import check_inputs, in_chunks, log_z_estimates, summarize

__all__ = ["BOUNDS", "evaluate_bound", "sampler_bound"]

BOUNDS = ("sir", "infinite")


def _energy(energy, x0, xt, t, proposal_logp, size: int) -> torch.Tensor:
    """E for rows [N, L] in chunks of `size`, float64 [N]."""
    fn = lambda s: energy(x0[s], xt[s], t[s], proposal_logp[s])
    return in_chunks(fn, x0.shape[0], size).double()


def sampler_bound(
    denoiser,
    x: torch.Tensor,
    *,
    steps: int,
    energy=None,
    num_candidates: int = 4,
    window: float = 1.0,
    bound: str = "sir",
    num_completions: int = 8,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """One draw of tau per sequence: {"mdlm": MDLM's T-step ELBO term sum_i -log mu(x0[S_i]),
    "edlm": EDLM's (with `energy`, K = num_candidates at the steps with t > 1 - window, as
    `edlm.sample` does)}: float64 [B], nats per sequence. Average many draws (rows) for the bound.

    bound: "sir" (finite K; num_completions = m completions, each with K - 1 competitors) or "infinite"
    (K = infinity; num_completions draws shared between N_S and Z, at least 2). The energy follows
    the sampler's protocol; a `self_normalized` energy (Z = 1) needs no log Z draws. The bound is
    for the sampler at temperature 1 and energy_temperature 1."""
    if bound not in BOUNDS:
        raise ValueError(f"sampler_bound: bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    if num_candidates < 1 or num_completions < 1:
        raise ValueError(
            f"sampler_bound: num_candidates and num_completions must be >= 1, got "
            f"{num_candidates}, {num_completions}"
        )
    if bound == "infinite" and num_completions < 2:
        raise ValueError(
            f"sampler_bound: the infinite bound needs num_completions >= 2, got {num_completions}"
        )
    if not 0.0 <= window <= 1.0:
        raise ValueError(f"sampler_bound: window must be in [0, 1], got {window}")
    mask_id = check_inputs("sampler_bound", denoiser, energy, x)
    B, L = x.shape
    device = x.device
    K, m = num_candidates, num_completions
    size = batch_size or B * m * K
    grid = schedule.sampling_grid(steps)
    gen_device = generator.device if generator is not None else device
    tau = torch.rand(B, L, generator=generator, device=gen_device, dtype=torch.float64).to(device)
    step_of = schedule.reveal_steps(tau, grid.to(device))  # [B, L]; steps = the final step
    mdlm = torch.zeros(B, dtype=torch.float64, device=device)
    edlm = torch.zeros(B, dtype=torch.float64, device=device)
    use_is = energy is not None and (K > 1 or bound == "infinite")
    z_one = bool(getattr(energy, "self_normalized", False))
    with torch.no_grad():
        for i in range(steps + 1):
            reveal = step_of == i  # [B, L]
            if not bool(reveal.any()):  # sync point (evaluation only)
                continue
            t = float(grid[min(i, steps)])
            masked = step_of >= i
            xt = torch.where(masked, torch.full_like(x, mask_id), x)
            t_vec = torch.full((B,), t, dtype=torch.float32, device=device)
            logits = denoiser(xt, t_vec)  # [B, L, V]
            log_mu_s = ops.sequence_logprob(logits, x, reveal).double()  # [B]
            mdlm -= log_mu_s
            if not use_is or i == steps or not t > 1.0 - window:
                edlm -= log_mu_s
                continue
            n = m * K if bound == "sir" else m
            cand, logp = ops.masked_sample(logits, xt, mask_id, num_samples=n, generator=generator)
            rest = (masked & ~reveal)[:, None]  # [B, 1, L]: masked positions outside S
            y = torch.where(reveal[:, None], x[:, None], cand[:, :m])  # [B, m, L] completions
            log_mu_y = log_mu_s[:, None] + (logp[:, :m].double() * rest).sum(-1)  # [B, m]
            xt_m = xt[:, None].expand(B, m, L).reshape(B * m, L)
            t_m = t_vec.repeat_interleave(m)
            log_w_y = -_energy(
                energy, y.reshape(B * m, L), xt_m, t_m, log_mu_y.reshape(-1).float(), size
            )
            log_w_y = log_w_y.view(B, m)
            if bound == "sir":
                z = cand[:, m:]  # [B, m (K - 1), L]: each completion's own K - 1 competitors
                log_mu_z = logp[:, m:].double().sum(-1)  # [B, m (K - 1)]
                xt_k = xt[:, None].expand(B, m * (K - 1), L).reshape(-1, L)
                log_w_z = -_energy(
                    energy,
                    z.reshape(-1, L),
                    xt_k,
                    t_vec.repeat_interleave(m * (K - 1)),
                    log_mu_z.reshape(-1).float(),
                    size,
                )
                others = torch.logsumexp(log_w_z.view(B, m, K - 1), -1)  # [B, m]
                ratio = log_w_y - torch.logaddexp(log_w_y, others)  # [B, m]
                log_r = math.log(K) + torch.logsumexp(ratio, -1) - math.log(m)
                edlm -= log_mu_s + log_r
            else:
                log_n = torch.logsumexp(log_w_y, -1) - math.log(m)  # T_m[log N_S]
                if z_one:
                    log_z = torch.zeros_like(log_n)
                else:
                    log_mu_c = logp.double().sum(-1)  # [B, m]: the same draws, all masked positions
                    e_c = _energy(
                        energy, cand.reshape(-1, L), xt_m, t_m, log_mu_c.reshape(-1).float(), size
                    )
                    log_z = log_z_estimates(e_c.view(B, m))[1]  # U_n[log Z]
                edlm -= log_mu_s + log_n - log_z
    out = {"mdlm": mdlm}
    if energy is not None:
        out["edlm"] = edlm
    return out


def evaluate_bound(
    denoiser,
    data: torch.Tensor,
    *,
    steps: int,
    energy=None,
    num_candidates: int = 4,
    window: float = 1.0,
    bound: str = "sir",
    num_completions: int = 8,
    num_tau: int = 1,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> dict:
    """`sampler_bound` over sequences data [N, L] (num_tau draws of tau each, averaged per
    sequence), summarized as `likelihood.summarize` does: "mdlm_T_*" (MDLM's T-step ELBO) and, with
    an energy, "edlm_T_*" (EDLM's, SIR or infinite) and "gain_T_*" (EDLM's minus MDLM's, paired),
    per token with standard errors across sequences, plus the settings."""
    if num_tau < 1:
        raise ValueError(f"evaluate_bound: num_tau must be >= 1, got {num_tau}")
    N, L = data.shape
    sums = {}
    rows = max(1, batch_size // max(1, num_completions + num_candidates))
    for a in range(0, N, rows):
        x = data[a : a + rows].repeat_interleave(num_tau, 0)
        out = sampler_bound(
            denoiser,
            x,
            steps=steps,
            energy=energy,
            num_candidates=num_candidates,
            window=window,
            bound=bound,
            num_completions=num_completions,
            batch_size=batch_size,
            generator=generator,
        )
        for k, v in out.items():
            sums.setdefault(k, []).append(v.view(-1, num_tau).mean(1).cpu())
    result = {"num_sequences": N, "length": L, "steps": steps, "num_tau": num_tau}
    result.update(summarize(torch.cat(sums["mdlm"]), L, "mdlm_T"))
    if energy is not None:
        result.update(summarize(torch.cat(sums["edlm"]), L, "edlm_T"))
        # the paired difference (same sequences, same reveal times): what the energy changes
        result.update(summarize(torch.cat(sums["edlm"]) - torch.cat(sums["mdlm"]), L, "gain_T"))
        result.update(bound=bound, k=num_candidates, window=window, num_completions=num_completions)
    return result
