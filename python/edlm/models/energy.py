"""Residual energies of EDLM (Xu et al. 2025; EDLM.md section 2), lower = more likely:

- `AREnergy`: E = -log p_AR(x0) + log mu(x0 | xt) from any causal LM with the same tokenizer (ours
  or a Hugging Face model from a local path); no training.
- `EnergyModel`: the learned NCE energy, a bidirectional transformer initialized from the
  denoiser; `NCETrainer` trains it against the frozen denoiser's own samples.

Both follow the sampler's protocol: energy(x0 [N, L], xt [N, L], t [N], proposal_logp [N]) -> [N].
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops, schedule
from ..config import ModelConfig
from .transformer import Block, EmbeddingLayer, LayerNorm, TimestepEmbedder, rotary_cos_sin


class AREnergy:
    """E(x0, xt) = -log p_AR(x0) + proposal_logp, with `proposal_logp` = log mu(x0 | xt).

    carry_over=True (default, as the public code): the AR log-likelihood sums only over the
    positions masked in xt, like the proposal's, so the target prod_{l masked} p_AR(x_l | x_<l)
    is self-normalized (Z = 1). carry_over=False: the AR log-likelihood of the whole sequence,
    so the target is the AR joint restricted to sequences that agree with xt.
    `ar` maps x [N, L] to logits [N, L, V'] scoring x[:, l] given x[:, :l].
    """

    def __init__(self, ar, mask_id: int, *, carry_over: bool = True):
        self.ar, self.mask_id, self.carry_over = ar, mask_id, carry_over

    def log_p_ar(self, x0: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        weight = (xt == self.mask_id) if self.carry_over else None
        return ops.sequence_logprob(self.ar(x0), x0, weight)

    def __call__(self, x0, xt, t, proposal_logp):
        return -self.log_p_ar(x0, xt) + proposal_logp.float()


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM as `x [N, L] -> logits [N, L, V']`, scoring every position: the
    sequence is read behind the model's BOS (or EOS) token. Loaded from a local folder only."""

    def __init__(self, model, bos_id: int):
        super().__init__()
        self.model, self.bos_id = model, bos_id

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=None):
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ImportError("an hf: energy needs the `transformers` package: pip install transformers") from None
        folder = Path(path).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"Hugging Face model folder not found: {folder}")
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
        cfg = model.config
        bos = cfg.bos_token_id if cfg.bos_token_id is not None else cfg.eos_token_id
        if bos is None:
            raise ValueError(f"{folder}: the model config has neither bos_token_id nor eos_token_id")
        return cls(model.to(device).eval(), int(bos))

    def forward(self, x):
        start = torch.full((x.shape[0], 1), self.bos_id, dtype=x.dtype, device=x.device)
        return self.model(input_ids=torch.cat([start, x[:, :-1]], dim=1)).logits


class EnergyModel(nn.Module):
    """forward(x0, xt, t) -> E [N]: a linear map of concat(embed(xt), embed(x0)), the denoiser's
    transformer blocks (adaLN on the noise level when time-conditioned), a final norm, mean
    pooling over positions and a two-layer head. The head's last layer starts at zero, so a fresh
    energy is 0 everywhere (EDLM = MDLM)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.vocab_embed = EmbeddingLayer(D, cfg.vocab_size)
        self.input_proj = nn.Linear(2 * D, D)
        with torch.no_grad():  # start as the mean of the two embeddings
            self.input_proj.weight.copy_(torch.cat([torch.eye(D), torch.eye(D)], dim=1) * 0.5)
            self.input_proj.bias.zero_()
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.blocks = nn.ModuleList(
            Block(D, cfg.n_heads, cfg.cond_dim, cfg.mlp_ratio, cfg.dropout, causal=False)
            for _ in range(cfg.n_layers)
        )
        self.norm_final = LayerNorm(D)
        self.head = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    @classmethod
    def from_denoiser(cls, denoiser) -> "EnergyModel":
        """An energy whose embedding, noise embedding and blocks start as copies of the denoiser's."""
        model = cls(copy.deepcopy(denoiser.cfg))
        model.vocab_embed.load_state_dict(denoiser.vocab_embed.state_dict())
        model.sigma_map.load_state_dict(denoiser.sigma_map.state_dict())
        model.blocks.load_state_dict(denoiser.blocks.state_dict())
        model.norm_final.load_state_dict(denoiser.output_layer.norm_final.state_dict())
        return model

    def forward(self, x0, xt, t, proposal_logp=None):
        N, L = x0.shape
        s = schedule.sigma(t) if self.cfg.time_conditioning else torch.zeros(N, device=x0.device)
        c = F.silu(self.sigma_map(s))
        cos, sin = rotary_cos_sin(L, self.cfg.dim // self.cfg.n_heads, x0.device)
        h = self.input_proj(torch.cat([self.vocab_embed(xt), self.vocab_embed(x0)], dim=-1))
        for block in self.blocks:
            h = block(h, cos, sin, c)
        pooled = self.norm_final(h).float().mean(1)  # [N, D]
        return self.head(pooled)[:, 0].float()


class NCETrainer(nn.Module):
    """The NCE objective (EDLM.md section 2) around a trainable energy and a frozen denoiser.

    loss(batch): positives are real x0 with xt ~ q(xt | x0) at the batch's times; negatives are
    `num_negatives` draws x0 ~ mu(. | xt) from the frozen denoiser, always in eval mode (no
    dropout; EDLM.md trap 8). loss = softplus(E_pos) + mean softplus(-E_neg). Only the energy's
    weights are in the state dict.
    """

    def __init__(self, energy: EnergyModel, denoiser: nn.Module, num_negatives: int = 1):
        super().__init__()
        self.energy = energy
        self.denoiser = denoiser.eval()
        for p in self.denoiser.parameters():
            p.requires_grad_(False)
        self.num_negatives = num_negatives
        self.cfg = energy.cfg

    def train(self, mode: bool = True):
        super().train(mode)
        self.denoiser.eval()
        return self

    def state_dict(self, *args, **kwargs):
        return self.energy.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True):
        return self.energy.load_state_dict(state, strict=strict)

    def parameters(self, recurse: bool = True):
        return self.energy.parameters(recurse)

    def loss(self, batch: dict):
        x0, t, noise = batch["x"], batch["t"], batch["noise"]
        mask_id, n = self.cfg.mask_id, self.num_negatives
        masked = noise < schedule.mask_prob(t)[:, None]
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)  # [B, L]
        g = torch.Generator(device=x0.device).manual_seed(int(batch.get("seed", 0)))
        with torch.no_grad():
            logits = self.denoiser(xt, t)
            neg, _ = ops.masked_sample(logits, xt, mask_id, num_samples=n, generator=g)  # [B, n, L]
        B, L = x0.shape
        e_pos = self.energy(x0, xt, t)  # [B]
        e_neg = self.energy(
            neg.reshape(B * n, L), xt.repeat_interleave(n, 0), t.repeat_interleave(n)
        ).view(B, n)
        loss = F.softplus(e_pos).mean() + F.softplus(-e_neg).mean()
        accuracy = 0.5 * ((e_pos < 0).float().mean() + (e_neg > 0).float().mean())
        return loss, {
            "nce_accuracy": accuracy.detach(),
            "energy_gap": (e_neg.mean(1) - e_pos).mean().detach(),
            "energy_pos": e_pos.mean().detach(),
        }


ENERGY_KINDS = ("ar", "ar-full", "nce", "hf", "hf-full")


def load_energy(spec: str, *, mask_id: int, vocab_size: int, device="cpu"):
    """An energy from a command-line spec: `ar:CKPT` / `ar-full:CKPT` (our AR model, carry-over or
    whole sequence), `nce:CKPT` (a trained NCE energy), `hf:PATH` / `hf-full:PATH` (a local Hugging
    Face causal LM with the same tokenizer)."""
    from .. import checkpoint

    kind, sep, path = spec.partition(":")
    if not sep or kind not in ENERGY_KINDS or not path:
        raise ValueError(f"--energy must be KIND:PATH with KIND in {', '.join(ENERGY_KINDS)}, got {spec!r}")
    carry_over = not kind.endswith("-full")
    if kind.startswith("hf"):
        return AREnergy(HFCausalLM.from_pretrained(path, device), mask_id, carry_over=carry_over)
    model, cfg = checkpoint.load_model(path, device)
    expected = "ar" if kind.startswith("ar") else "energy"
    if cfg.model != expected:
        raise ValueError(f"--energy {spec}: the checkpoint holds a {cfg.model!r} model, not {expected!r}")
    if cfg.model_config.vocab_size != vocab_size:
        raise ValueError(
            f"--energy {spec}: vocabulary {cfg.model_config.vocab_size} does not match the "
            f"denoiser's {vocab_size}"
        )
    return AREnergy(model, mask_id, carry_over=carry_over) if expected == "ar" else model
