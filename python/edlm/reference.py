"""Plain PyTorch references of the fused ops in `edlm.ops`: the most obvious code, in fp64.

Tests compare the ops with these; they are never used on a hot path. Random references draw with
torch.multinomial, so they match the ops in distribution, not draw for draw.
"""

from __future__ import annotations

import torch


def masked_sample_probs(
    logits: torch.Tensor,
    mask_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> torch.Tensor:
    """Exact distribution of a drawn token: softmax(logits / T) without the mask column, truncated.

    top_k (0 = off) keeps the tokens whose logit is >= the k-th largest real logit; top_p (1 = off)
    then keeps those whose logit is >= the largest logit t such that the tokens at logits >= t hold
    at least top_p of the (top-k renormalized) probability. Ties at a threshold are all kept; the
    kept tokens' probabilities are renormalized.

    logits [B, L, V] -> probabilities [B, L, V] float64 (the mask column and dropped tokens are 0).
    """
    x = logits.double()  # [B, L, V]
    x[..., mask_id] = float("-inf")
    n_real = x.shape[-1] - 1
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[..., mask_id] = False
    if 0 < top_k < n_real:
        real = torch.cat([x[..., :mask_id], x[..., mask_id + 1 :]], dim=-1)  # [B, L, V - 1]
        kth = real.sort(-1, descending=True).values[..., top_k - 1 : top_k]  # [B, L, 1]
        keep &= x >= kth
    probs = (x / temperature).masked_fill(~keep, float("-inf")).softmax(-1)  # [B, L, V]
    if top_p < 1.0:
        # mass(t): the probability of the tokens with logits >= t, at every kept logit t.
        kept_x, order = x.masked_fill(~keep, float("-inf")).sort(-1)  # ascending [B, L, V]
        suffix = probs.gather(-1, order).flip(-1).cumsum(-1).flip(-1)  # mass from here up
        first = torch.searchsorted(kept_x, kept_x, side="left")  # first of each tie group
        mass = suffix.gather(-1, first)  # [B, L, V]
        ok = (mass >= top_p) & (kept_x > float("-inf"))
        threshold = kept_x.masked_fill(~ok, float("-inf")).amax(-1, keepdim=True)  # [B, L, 1]
        keep &= x >= threshold
        probs = (x / temperature).masked_fill(~keep, float("-inf")).softmax(-1)
    return probs


def masked_sample(
    logits: torch.Tensor,
    xt: torch.Tensor,
    mask_id: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `edlm.ops.masked_sample`: tokens [B, K, L] int64, logp [B, K, L] float32."""
    B, L, V = logits.shape
    K = num_samples
    probs = masked_sample_probs(logits, mask_id, temperature, top_p, top_k)  # [B, L, V]
    drawn = torch.multinomial(
        probs.reshape(B * L, V), K, replacement=True, generator=generator
    )  # [B*L, K]
    drawn = drawn.reshape(B, L, K).permute(0, 2, 1)  # [B, K, L]
    logp_drawn = probs.log().unsqueeze(1).expand(B, K, L, V).gather(-1, drawn[..., None])[..., 0]
    masked = (xt == mask_id).unsqueeze(1).expand(B, K, L)  # [B, K, L]
    tokens = torch.where(masked, drawn, xt.unsqueeze(1).expand(B, K, L))
    logp = torch.where(masked, logp_drawn, torch.zeros((), dtype=torch.float64))
    return tokens, logp.float()


def sequence_logprob(
    logits: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of `edlm.ops.sequence_logprob`: [N] float32."""
    logp = logits.double().log_softmax(-1)  # [N, L, V]
    picked = logp.gather(-1, tokens[..., None])[..., 0]  # [N, L]
    if weight is None:
        weight = torch.ones_like(picked)
    return (weight.double() * picked).sum(-1).float()


def importance_resample(
    log_weights: torch.Tensor,
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `edlm.ops.importance_resample`: index [B, S] int64, ess [B] float32."""
    w = log_weights.double().softmax(-1)  # [B, K]
    index = torch.multinomial(w, num_samples, replacement=True, generator=generator)
    ess = 1.0 / (w * w).sum(-1)
    return index, ess.float()
