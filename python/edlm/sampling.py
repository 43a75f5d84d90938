"""Generation: MDLM's ancestral sampler and EDLM's parallel importance sampling (Algorithm 1 of
Xu et al. 2025; EDLM.md sections 1 and 3), as one function over two small protocols:

    denoiser(xt: int64 [B, L], t: float32 [B]) -> logits [B, L, V]
    energy(x0: int64 [N, L], xt: int64 [N, L], t: float32 [N], proposal_logp: float32 [N]) -> [N]

(proposal_logp: log mu(x0 | xt) of the untempered denoiser over the masked positions).

Lower energy = more likely. Each position's reveal time is drawn once up front: position l is
revealed at the step t -> s with s <= tau_l < t, tau_l ~ U(0, 1), which gives exactly the reverse
step's reveal probability (t - s) / t. Steps that reveal nothing change nothing whatever x0 would
have been, so they are skipped with no network call (MDLM's cache, generalized: it holds for
time-conditioned denoisers too), and the loop needs no device-to-host sync per step.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from . import ops, schedule

FINALS = ("argmax", "sample")


def _device_of(denoiser, prompt):
    if prompt is not None:
        return prompt.device
    params = getattr(denoiser, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _check(
    batch_size,
    length,
    mask_id,
    steps,
    num_candidates,
    window,
    energy_temperature,
    temperature,
    top_p,
    top_k,
    prompt,
    final,
):
    if final not in FINALS:
        raise ValueError(f"sample: final must be one of {', '.join(FINALS)}, got {final!r}")
    if batch_size < 1 or length < 1:
        raise ValueError(f"sample: batch_size and length must be >= 1, got {batch_size}, {length}")
    if steps < 1:
        raise ValueError(f"sample: steps must be >= 1, got {steps}")
    if num_candidates < 1:
        raise ValueError(f"sample: num_candidates must be >= 1, got {num_candidates}")
    if not 0.0 <= window <= 1.0:
        raise ValueError(f"sample: window must be in [0, 1], got {window}")
    if not energy_temperature > 0:
        raise ValueError(f"sample: energy_temperature must be > 0, got {energy_temperature}")
    if not temperature > 0:
        raise ValueError(f"sample: temperature must be > 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample: top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"sample: top_k must be >= 0 (0 = off), got {top_k}")
    if mask_id < 0:
        raise ValueError(f"sample: mask_id must be >= 0, got {mask_id}")
    if prompt is not None and (
        prompt.dtype != torch.int64 or tuple(prompt.shape) != (batch_size, length)
    ):
        raise ValueError(
            f"sample: prompt must be int64 [{batch_size}, {length}] with mask_id where free, "
            f"got {prompt.dtype} {list(prompt.shape)}"
        )


def _log_mu(logits, cand, masked, mask_id):
    """log mu(x0 | xt) [B, K] of candidates cand [B, K, L] over the masked positions [B, L], from
    the untempered logits [B, L, V] without the mask column (as masked_sample reads them): one
    sequence_logprob per candidate, so no [B, K, L, V] copy is made."""
    mask_col = torch.tensor([mask_id], device=logits.device)
    real = logits.index_fill(-1, mask_col, float("-inf"))  # [B, L, V]
    return torch.stack(
        [ops.sequence_logprob(real, cand[:, j], masked) for j in range(cand.shape[1])], dim=1
    )


@torch.no_grad()
def sample(
    denoiser,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    steps: int = 256,
    energy=None,
    num_candidates: int = 1,
    window: float = 1.0,
    energy_temperature: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    prompt: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_stats: bool = False,
    device: torch.device | str | None = None,
    final: str = "argmax",
    context: int | None = None,
    stride: int | None = None,
    progress: bool = False,
):
    """Draw `batch_size` sequences of `length` tokens; (tokens, stats) when `return_stats`.

    With `energy=None` or `num_candidates=1` this is MDLM's ancestral sampler (final noise
    removal included). Otherwise, at the steps whose t > 1 - `window`, `num_candidates` = K
    complete candidates x0 are drawn per row from the denoiser in one `edlm.ops.masked_sample`
    call ([B, K, L] throughout), scored in one batched energy call over B*K rows, and one is kept
    per row with `edlm.ops.importance_resample`; the step then reveals positions from it.
    `prompt` tokens (positions != mask_id) are never changed and condition every step.

    Weights and target. The candidates come from q_tau = softmax(logits / `temperature`); the
    energy is passed `proposal_logp` = log mu(x0 | xt) of the untempered denoiser mu over the
    masked positions (what the energies' definitions and the likelihood estimators use), and

        log_w = -E / energy_temperature + log mu(x0 | xt) - log q_tau(x0 | xt),

    so the step targets mu exp(-E / energy_temperature) / Z whatever `temperature` is: the
    tempered proposal only changes how efficiently the target is reached (the correction is 0 at
    temperature 1 and is then not computed). For the AR energies (`edlm.models.AREnergy`,
    E = -log p_AR + log mu) the weights are log p_AR - log q_tau, and the target is the AR
    distribution its docstring names (whole sequence: the AR conditional); for the NCE energy it
    is mu exp(-E) / Z. Plain steps (outside the window, or K = 1) draw from q_tau.

    Truncation. `top_p` (1 = off) and `top_k` (0 = off) truncate every draw from the denoiser
    (plain steps, candidates and final="sample"), as `edlm.ops.masked_sample` defines them: q_tau
    is then the truncated, renormalized tempered law, and the candidates' log q_tau in the weights
    is its log-probability. So an IS step still reaches mu exp(-E / energy_temperature), but
    restricted to the sequences whose every drawn token lies in its position's kept set (the
    proposal cannot propose the rest).

    final: how the positions no step revealed (those whose reveal time falls below the grid's last
    time, 1e-5) are filled: "argmax" of the denoiser (MDLM's noise removal, the default), or
    "sample" from q_tau (a plain step, no importance sampling). Argmax gives every other token
    probability 0, so a likelihood bound of the T-step sampler (EDLM.md section 4) holds for
    final="sample" (at temperature 1) only; with it the sampler's law is exactly computable on a
    toy (tests/sampler_law.py).

    stats: network calls, energy calls, IS steps, and per IS step and row ([IS steps, B] each):
    "ess", the effective sample size 1 / sum w_k^2 of the normalized weights, in [1, K];
    "sd_log_w", the standard deviation of log_w over the K candidates; "energy_gain", the mean
    energy of the candidates minus the chosen one's (> 0: the chosen one is more likely). ESS near
    1 with sd_log_w of several nats means the step selects the best of k rather than reweighting
    (k too small for the energy). Also the IS steps' times ("is_times") and "seconds".

    Longer than the model (semi-autoregressive, as MDLM's): `context` is the longest sequence the
    denoiser takes (default: its `cfg.length` when it has one, else unlimited). When `length` is
    larger, the first `context` tokens are sampled as above, then blocks of `stride` tokens
    (default: context // 2) follow, each sampled with the last `context - stride` tokens so far
    (and any prompt tokens in its window) fixed as its prompt; tokens once drawn never change.
    The energy scores each block's window. Stats are summed over the blocks ("blocks" counts
    them; the per-IS-step tensors are concatenated); `progress` shows a bar over the blocks.
    """
    limit = context if context is not None else getattr(getattr(denoiser, "cfg", None), "length", 0)
    if context is not None and context < 1:
        raise ValueError(f"sample: context must be >= 1, got {context}")
    if limit and length > limit:
        return _semi_autoregressive(
            denoiser,
            limit,
            stride,
            progress,
            batch_size=batch_size,
            length=length,
            mask_id=mask_id,
            steps=steps,
            energy=energy,
            num_candidates=num_candidates,
            window=window,
            energy_temperature=energy_temperature,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            prompt=prompt,
            generator=generator,
            return_stats=return_stats,
            device=device,
            final=final,
        )
    if stride is not None and not limit:
        raise ValueError("sample: stride is for sampling longer than the context; give context")
    _check(
        batch_size,
        length,
        mask_id,
        steps,
        num_candidates,
        window,
        energy_temperature,
        temperature,
        top_p,
        top_k,
        prompt,
        final,
    )
    start = time.perf_counter()
    device = torch.device(device) if device is not None else _device_of(denoiser, prompt)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"sample: the generator is on {generator.device} but sampling runs on {device}: "
            f"pass torch.Generator(device={str(device)!r}).manual_seed(...) or no generator"
        )
    B, L, K = batch_size, length, num_candidates
    x = torch.full((B, L), mask_id, dtype=torch.long, device=device)
    if prompt is not None:
        x = torch.where(prompt != mask_id, prompt.to(device), x)
    free = x == mask_id  # [B, L]

    # Reveal times, drawn once (one sync, here, to plan the steps on the host).
    gen_device = generator.device if generator is not None else device
    tau = torch.rand(B, L, generator=generator, device=gen_device, dtype=torch.float64).to(device)
    grid = schedule.sampling_grid(steps)  # [steps + 1], float64 on the host
    step_of = schedule.reveal_steps(tau, grid.to(device))  # step i: grid[i+1] <= tau < grid[i]
    step_of = torch.where(free, step_of, torch.full_like(step_of, -1))  # fixed tokens: never
    counts = torch.bincount(step_of[free], minlength=steps + 1)  # reveals per step; [steps] = never
    active_steps = (counts > 0).cpu().tolist()  # sync point: once per call, not per step
    leftover = active_steps[steps]  # positions never revealed: final noise removal

    use_is = energy is not None and K > 1
    draw = dict(temperature=temperature, top_p=top_p, top_k=top_k, generator=generator)
    exact_q = temperature == 1.0 and top_p == 1.0 and top_k == 0  # q_tau is mu itself
    stats = {"network_calls": 0, "energy_calls": 0, "is_steps": 0, "is_times": []}
    per_step = {"ess": [], "sd_log_w": [], "energy_gain": []}  # [B] tensors: no sync per step
    for i in range(steps):
        if not active_steps[i]:
            continue  # nothing is revealed at this step: x is unchanged whatever x0 is
        t = float(grid[i])
        reveal = step_of == i  # [B, L]
        t_vec = torch.full((B,), t, dtype=torch.float32, device=device)
        logits = denoiser(x, t_vec)  # [B, L, V]
        stats["network_calls"] += 1
        if use_is and t > 1.0 - window:
            cand, logp = ops.masked_sample(
                logits, x, mask_id, num_samples=K, **draw
            )  # [B, K, L] each
            log_q = logp.sum(-1)  # [B, K]: log q_tau, the law the candidates come from
            log_mu = log_q if exact_q else _log_mu(logits, cand, x == mask_id, mask_id)
            xt_rep = x.unsqueeze(1).expand(B, K, L)
            e = energy(
                cand.reshape(B * K, L),
                xt_rep.reshape(B * K, L),
                t_vec.repeat_interleave(K),
                log_mu.reshape(B * K),
            )  # [B*K]
            stats["energy_calls"] += 1
            e = e.float().reshape(B, K)
            log_w = -e / energy_temperature
            if not exact_q:  # keeps the target mu exp(-E / T_is), not q_tau exp(-E / T_is)
                log_w = log_w + (log_mu - log_q)
            index, ess = ops.importance_resample(
                log_w, num_samples=1, generator=generator
            )  # [B, 1], [B]
            x0 = cand.gather(1, index[:, :, None].expand(B, 1, L))[:, 0]  # [B, L]
            stats["is_steps"] += 1
            stats["is_times"].append(t)
            per_step["ess"].append(ess)
            per_step["sd_log_w"].append(log_w.std(-1, correction=0))
            per_step["energy_gain"].append(e.mean(-1) - e.gather(1, index)[:, 0])
        else:
            x0 = ops.masked_sample(logits, x, mask_id, **draw)[0][:, 0]
        x = torch.where(reveal, x0, x)

    if leftover:  # final noise removal at the end of the grid
        t_vec = torch.full((B,), float(grid[-1]), dtype=torch.float32, device=device)
        logits = denoiser(x, t_vec)
        if final == "sample":
            x = ops.masked_sample(logits, x, mask_id, **draw)[0][:, 0]
        else:
            logits = logits.float()
            logits[..., mask_id] = float("-inf")
            x = torch.where(x == mask_id, logits.argmax(-1), x)
        stats["network_calls"] += 1

    if not return_stats:
        return x
    for name, values in per_step.items():
        stats[name] = torch.stack(values) if values else torch.empty(0, B, device=device)
    stats["seconds"] = time.perf_counter() - start
    return x, stats


def _semi_autoregressive(denoiser, context, stride, progress, *, length, prompt, **kw):
    """`sample` beyond the denoiser's context: the first window, then blocks of `stride` tokens,
    each with the `context - stride` tokens before it fixed (see `sample`)."""
    stride = context // 2 if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"sample: stride must be in [1, context = {context}], got {stride}")
    B, mask_id = kw["batch_size"], kw["mask_id"]
    if prompt is not None and (prompt.dtype != torch.int64 or tuple(prompt.shape) != (B, length)):
        raise ValueError(
            f"sample: prompt must be int64 [{B}, {length}] with mask_id where free, "
            f"got {prompt.dtype} {list(prompt.shape)}"
        )
    return_stats = kw.pop("return_stats")
    device = kw.pop("device")
    device = torch.device(device) if device is not None else _device_of(denoiser, prompt)
    out = torch.full((B, length), mask_id, dtype=torch.long, device=device)
    if prompt is not None:
        out = prompt.to(device).clone()
    windows = [(0, context)]  # (start, end) of each block's window; its new tokens are the tail
    pos = context
    while pos < length:
        new = min(stride, length - pos)
        windows.append((pos + new - context, pos + new))
        pos += new
    totals = {"network_calls": 0, "energy_calls": 0, "is_steps": 0, "is_times": []}
    per_step = {"ess": [], "sd_log_w": [], "energy_gain": []}
    start = time.perf_counter()
    for lo, hi in tqdm(windows, desc="edlm sample", unit="block", disable=not progress):
        x, stats = sample(
            denoiser,
            length=context,
            prompt=out[:, lo:hi].clone(),
            return_stats=True,
            device=device,
            context=context,
            **kw,
        )
        out[:, lo:hi] = x  # the window's fixed tokens come back unchanged
        for name in ("network_calls", "energy_calls", "is_steps"):
            totals[name] += stats[name]
        totals["is_times"] += stats["is_times"]
        for name in per_step:
            per_step[name].append(stats[name])
    if not return_stats:
        return out
    for name, values in per_step.items():
        totals[name] = torch.cat(values)
    totals["blocks"] = len(windows)
    totals["seconds"] = time.perf_counter() - start
    return out, totals
