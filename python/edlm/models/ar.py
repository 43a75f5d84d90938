"""The autoregressive model: the denoiser's trunk made causal, trained on next-token prediction.
It serves as a baseline and as the AR energy of EDLM (EDLM.md section 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .transformer import Block, EmbeddingLayer, FinalLayer, KVCache, rotary_cos_sin


class ARModel(nn.Module):
    """forward(x [B, L] int64) -> logits [B, L, V] with logits[:, l] scoring x[:, l] given x[:, :l].

    The sequence is read shifted right behind a start token, for which the mask id serves (it never
    occurs in data), so every position, the first included, gets a prediction.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_embed = EmbeddingLayer(cfg.dim, cfg.vocab_size)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, None, cfg.mlp_ratio, cfg.dropout, causal=True)
            for _ in range(cfg.n_layers)
        )
        self.output_layer = FinalLayer(cfg.dim, cfg.vocab_size, None)

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L = x.shape
        start = torch.full((B, 1), self.mask_id, dtype=x.dtype, device=x.device)
        inputs = torch.cat([start, x[:, :-1]], dim=1)
        cos, sin = rotary_cos_sin(L, self.cfg.dim // self.cfg.n_heads, x.device)
        h = self.vocab_embed(inputs)
        for block in self.blocks:
            h = block(h, cos, sin)
        logits = self.output_layer(h).float()
        logits[..., self.mask_id] = float("-inf")  # the mask is never a next token
        return logits

    def _step(self, tokens: torch.Tensor, caches: list[KVCache], pos: int, cos, sin):
        """Logits [B, n, V] for positions pos .. pos + n - 1 given the cached ones before them;
        tokens [B, n] are the inputs at those positions (the start token, then x shifted)."""
        h = self.vocab_embed(tokens)
        c, s = cos[pos : pos + tokens.shape[1]], sin[pos : pos + tokens.shape[1]]
        for block, cache in zip(self.blocks, caches):
            h = block(h, c, s, cache=cache, pos=pos)
        logits = self.output_layer(h).float()
        logits[..., self.mask_id] = float("-inf")
        return logits

    @torch.no_grad()
    def generate(
        self,
        batch_size: int,
        length: int | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device=None,
        cache: bool = True,
    ) -> torch.Tensor:
        """Ancestral samples [batch_size, length] int64: each token from softmax(logits / T) given
        the ones before it. With `cache` (the default) each step runs the new token only, against
        a static key/value cache of the positions before it (one [B, H, length, Dh] buffer per
        block); cache=False recomputes the whole prefix per token (the reference). Both draw the
        same tokens for the same generator, up to float rounding of the logits."""
        length = self.cfg.length if length is None else length
        if batch_size < 1 or length < 1:
            raise ValueError(
                f"ARModel.generate: batch_size and length must be >= 1, got {batch_size}, {length}"
            )
        if not temperature > 0:
            raise ValueError(f"ARModel.generate: temperature must be > 0, got {temperature}")
        device = device or next(self.parameters()).device
        x = torch.zeros(batch_size, length, dtype=torch.long, device=device)
        if not cache:
            for pos in range(length):
                logits = self(x[:, : pos + 1])[:, pos].double() / temperature
                x[:, pos] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            return x
        heads, dim = self.cfg.n_heads, self.cfg.dim
        dtype = next(self.parameters()).dtype
        caches = [
            KVCache(batch_size, heads, length, dim // heads, dtype, device) for _ in self.blocks
        ]
        cos, sin = rotary_cos_sin(length, dim // heads, device)
        token = torch.full((batch_size, 1), self.mask_id, dtype=torch.long, device=device)
        for pos in range(length):
            logits = self._step(token, caches, pos, cos, sin)[:, 0].double() / temperature
            x[:, pos] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            token = x[:, pos : pos + 1]
        return x

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Mean next-token negative log-likelihood (nats per token). batch: x [B, L]."""
        x = batch["x"]
        nll = F.cross_entropy(self(x).flatten(0, 1), x.flatten())
        return nll, {"nll_per_token": nll.detach()}
