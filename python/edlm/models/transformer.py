"""The transformer trunk shared by the denoiser, the AR model and the energy model: MDLM's DiT
blocks (Peebles & Xie 2023, as used by Sahoo et al. 2024) with rotary positions, PyTorch's
scaled_dot_product_attention, and optional adaLN-zero conditioning. Module names follow MDLM's
`models/dit.py` so that its checkpoints load by name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in fp32 (as MDLM's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x):
        return F.layer_norm(x.float(), [self.dim]).to(x.dtype) * self.weight


def rotary_cos_sin(length: int, head_dim: int, device, base: float = 10_000.0):
    """cos, sin [L, head_dim] of rotary position embeddings (non-interleaved halves)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq)  # [L, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [L, head_dim]
    return emb.cos(), emb.sin()


def apply_rotary(x, cos, sin):
    """x [B, H, L, Dh] rotated by position."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class KVCache:
    """A block's keys and values for every position so far, preallocated ([B, H, max_len, Dh],
    a static cache as gpt-fast's): `update` writes positions pos .. pos + L - 1 and returns the
    keys and values of positions 0 .. pos + L - 1 (views, no copy)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos):
        """With a tensor `pos` ([1] int64, static shapes: the compiled decode step), writes one
        position there and returns the whole buffers, whose slots past `pos` the caller masks."""
        if isinstance(pos, torch.Tensor):
            self.k.index_copy_(2, pos, k)
            self.v.index_copy_(2, pos, v)
            return self.k, self.v
        end = pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KVCache: position {end - 1} is past the cache's {self.k.shape[2]}")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def _attend_static(q, k, v, pos):
    """Attention of one query [B, H, 1, Dh] (at position pos, a [1] tensor) over a whole static
    cache [B, H, max_len, Dh], the slots after pos masked out. Written as plain reductions rather
    than scaled_dot_product_attention so that inductor fuses it into the compiled decode step."""
    scores = (q * k).sum(-1) * k.shape[-1] ** -0.5  # [B, H, max_len]
    later = torch.arange(k.shape[2], device=k.device) > pos
    weights = scores.float().masked_fill(later, float("-inf")).softmax(-1).to(v.dtype)
    return (weights[..., None] * v).sum(2, keepdim=True)


class Block(nn.Module):
    """Pre-LN transformer block; with `cond_dim` it is a DiT block with adaLN-zero modulation."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        cond_dim: int | None,
        mlp_ratio: int,
        dropout: float,
        causal: bool,
    ):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim),
        )
        self.adaLN_modulation = None
        if cond_dim is not None:
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, cos, sin, c=None, cache: KVCache | None = None, pos: int = 0):
        """x [B, L, D]; cos, sin [L, Dh] for its positions. With `cache` (causal blocks only), x
        holds positions pos .. pos + L - 1: their keys and values are written into the cache and
        the queries attend to every cached position up to their own. A tensor `pos` ([1] int64)
        is the static-shape form of one new position (L = 1), for the compiled decode step."""
        B, L, D = x.shape
        if self.adaLN_modulation is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
            h = modulate(self.norm1(x), shift1, scale1)
        else:
            h = self.norm1(x)
        q, k, v = (
            self.attn_qkv(h).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [B, H, L, Dh]
        if cache is None:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            k, v = cache.update(k, v, pos)  # [B, H, pos + L, Dh], or every slot
            if isinstance(pos, torch.Tensor):  # static shapes: one query, the slots past pos masked
                h = _attend_static(q, k, v, pos)
            else:
                mask = None
                if L > 1:  # query i (position pos + i) sees keys 0 .. pos + i
                    keys = torch.arange(pos + L, device=x.device)
                    mask = keys[None, :] <= (pos + torch.arange(L, device=x.device))[:, None]
                h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = self.attn_out(h.transpose(1, 2).reshape(B, L, D))
        h = F.dropout(h, self.dropout, self.training)
        if self.adaLN_modulation is not None:
            x = x + gate1[:, None] * h
            h = self.mlp(modulate(self.norm2(x), shift2, scale2))
            return x + gate2[:, None] * F.dropout(h, self.dropout, self.training)
        x = x + h
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar noise level through a two-layer MLP (DiT)."""

    def __init__(self, hidden: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(
            nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, s):
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=s.device).float() / half)
        args = s[:, None].float() * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x):
        return self.embedding[x]


class FinalLayer(nn.Module):
    """Last norm and the (untied, zero-initialized) output projection, adaLN-modulated if
    conditioned."""

    def __init__(self, dim: int, out: int, cond_dim: int | None):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = None
        if cond_dim is not None:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c=None):
        h = self.norm_final(x)
        if self.adaLN_modulation is not None:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        return self.linear(h)
