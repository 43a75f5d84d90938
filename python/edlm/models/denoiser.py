"""The masked-diffusion denoiser mu_theta(x0 | xt): MDLM's diffusion transformer with the SUBS
parameterization (EDLM.md section 1): the mask token gets probability 0 and unmasked positions
carry over. Its loss is the continuous-time NELBO with antithetic times."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import schedule
from ..config import ModelConfig
from .transformer import Block, EmbeddingLayer, FinalLayer, TimestepEmbedder, rotary_cos_sin


class Denoiser(nn.Module):
    """forward(xt [B, L] int64, t [B] float32) -> log-probabilities [B, L, V] (SUBS)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_embed = EmbeddingLayer(cfg.dim, cfg.vocab_size)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, cfg.cond_dim, cfg.mlp_ratio, cfg.dropout, causal=False)
            for _ in range(cfg.n_layers)
        )
        self.output_layer = FinalLayer(cfg.dim, cfg.vocab_size, cfg.cond_dim)

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    def raw_logits(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network output [B, L, V] before SUBS, in fp32."""
        B, L = xt.shape
        # Without time conditioning the noise level is fed as 0 (MDLM): a learned constant.
        s = schedule.sigma(t) if self.cfg.time_conditioning else torch.zeros(B, device=xt.device)
        c = F.silu(self.sigma_map(s))
        cos, sin = rotary_cos_sin(L, self.cfg.dim // self.cfg.n_heads, xt.device)
        x = self.vocab_embed(xt)
        for block in self.blocks:
            x = block(x, cos, sin, c)
        return self.output_layer(x, c).float()

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.raw_logits(xt, t)
        logits[..., self.mask_id] = float("-inf")
        logp = logits.log_softmax(-1)
        carry = torch.full_like(logp, float("-inf")).scatter_(-1, xt[..., None], 0.0)
        return torch.where((xt != self.mask_id)[..., None], carry, logp)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """NELBO per token. batch: x [B, L] clean tokens, t [B] times, noise [B, L] uniforms
        (the training loop draws both, so data-parallel ranks reproduce one process exactly)."""
        x0, t, noise = batch["x"], batch["t"], batch["noise"]
        xt, masked = schedule.forward_mask(x0, t, noise, self.mask_id)  # [B, L] each
        logits = self.raw_logits(xt, t)
        logits[..., self.mask_id] = float("-inf")
        nll = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view_as(x0)
        nelbo = (nll * masked).sum(-1) * schedule.loss_weight(t)  # [B] nats per sequence
        per_token = nelbo / x0.shape[1]
        return per_token.mean(), {"nelbo_per_token": per_token.detach().mean()}
