"""Plain PyTorch references of the fused ops in `edlm.ops`: the most obvious code, in fp64.

Tests compare the ops with these; they are never used on a hot path. Random references draw with
torch.multinomial, so they match the ops in distribution, not draw for draw.
"""

from __future__ import annotations

import torch


def masked_sample_probs(
    logits: torch.Tensor, mask_id: int, temperature: float = 1.0
) -> torch.Tensor:
    """Exact distribution of a drawn token: softmax(logits / T) without the mask column.

    logits [B, L, V] -> probabilities [B, L, V] float64 (the mask column is 0).
    """
    scaled = logits.double() / temperature  # [B, L, V]
    scaled[..., mask_id] = float("-inf")
    return scaled.softmax(-1)


def masked_sample(
    logits: torch.Tensor,
    xt: torch.Tensor,
    mask_id: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `edlm.ops.masked_sample`: tokens [B, K, L] int64, logp [B, K, L] float32."""
    B, L, V = logits.shape
    K = num_samples
    probs = masked_sample_probs(logits, mask_id, temperature)  # [B, L, V]
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
