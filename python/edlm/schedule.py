"""The masked-diffusion noise schedule (MDLM, Sahoo et al. 2024; EDLM.md section 1).

Log-linear schedule: alpha_t = 1 - (1 - eps) t, so a position is masked at time t with probability
(1 - eps) t, and the continuous-time NELBO weights the masked tokens' cross-entropy by
-alpha'_t / (1 - alpha_t) = 1 / t.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-3  # alpha_1 = eps: a sliver of signal is left at t = 1
T_MIN = 1e-3  # training times are drawn in [T_MIN, 1]


def mask_prob(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Probability that a position is masked at time t: 1 - alpha_t = (1 - eps) t."""
    return (1.0 - eps) * t


def forward_mask(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, mask_id: int, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process q(xt | x0): position l is masked when noise[..., l] < mask_prob(t).

    x0: int64 [B, L]; t: [B]; noise: uniforms [B, L] (drawn by the caller, so that training ranks
    and evaluation control them). Returns (xt [B, L] with mask_id where masked, masked bool [B, L]).
    The one copy of the forward process: training, NCE and the likelihood estimators all use it.
    """
    masked = noise < mask_prob(t, eps)[:, None]  # [B, L]
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def sigma(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Total noise -log(alpha_t): what MDLM's denoiser is conditioned on when time-conditioned."""
    return -torch.log1p(-(1.0 - eps) * t)


def loss_weight(t: torch.Tensor) -> torch.Tensor:
    """-alpha'_t / (1 - alpha_t) = 1 / t: the NELBO weight of a masked token's cross-entropy."""
    return 1.0 / t


def antithetic_times(u: float | torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Low-variance training times t_i = (u + i / total) mod 1, mapped into [T_MIN, 1].

    `index` holds each example's position in the global batch of `total` examples, so that data
    parallel ranks draw together exactly the times one process would.
    """
    t = torch.remainder(u + index.double() / total, 1.0)
    return (T_MIN + (1.0 - T_MIN) * t).float()


def sampling_grid(steps: int, t_end: float = 1e-5) -> torch.Tensor:
    """The reverse-time grid 1 = t_0 > t_1 > ... > t_steps = t_end (uniform), [steps + 1]."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64)


def reveal_steps(tau: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The step that reveals each position: i where grid[i+1] <= tau < grid[i], and len(grid) - 1
    (= steps, the final noise removal) where tau < grid[-1]. tau: float64 [B, L] reveal times,
    uniform on (0, 1); grid: `sampling_grid(steps)` on tau's device. Returns int64 [B, L]. With
    tau ~ U(0, 1) step i reveals a still-masked position with the reverse step's probability
    (t_i - t_{i+1}) / t_i, as MDLM's ancestral sampler does."""
    return torch.bucketize(-tau, -grid, right=False) - 1


def bits_per_token(nll_nats_per_token: float) -> float:
    return nll_nats_per_token / math.log(2.0)
