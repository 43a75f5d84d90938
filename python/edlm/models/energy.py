"""Residual energies of EDLM (Xu et al. 2025; EDLM.md section 2), lower = more likely:

- `AREnergy`: E = -log p_AR(x0) + log mu(x0 | xt) from any causal LM with the same tokenizer (ours
  or a Hugging Face model from a local path); no training. Whole sequence (`ar:`, the paper's
  equation: the target is the AR conditional) or carry-over (`ar-carry:`, the public code's: Z = 1,
  but not the AR conditional).
- `EnergyModel`: the learned NCE energy, a bidirectional transformer initialized from the
  denoiser; its `loss` is NCE against the frozen denoiser's own samples.

Both follow the sampler's protocol: energy(x0 [N, L], xt [N, L], t [N], proposal_logp [N]) -> [N],
with proposal_logp = log mu(x0 | xt) of the untempered denoiser over the masked positions; both
are defined relative to mu (target mu exp(-E) / Z), and `edlm.sample` corrects its weights by
log mu - log q_tau when it draws candidates from a tempered proposal q_tau.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops, schedule
from ..config import ModelConfig
from .transformer import Block, EmbeddingLayer, LayerNorm, TimestepEmbedder, rotary_cos_sin


class AREnergy:
    """E(x0, xt) = -log p_AR(x0) + proposal_logp, with `proposal_logp` = log mu(x0 | xt) over the
    positions masked in xt (what `edlm.sample` and the likelihood estimators pass), so that the
    target mu exp(-E) / Z is an AR distribution whatever the denoiser.

    carry_over=False (whole sequence; the `ar:` / `hf:` specs, the paper's equation): log p_AR
    sums over every position, so mu exp(-E) = p_AR(x0) on the sequences that agree with xt and the
    target is the AR conditional p_AR(x_masked | x_revealed). Z(xt) = p_AR(x_revealed) (the AR
    marginal of the revealed tokens), not 1: the likelihood estimators draw log Z.
    carry_over=True (the `ar-carry:` / `hf-carry:` specs, the public code's default): log p_AR sums
    only over the masked positions, so the target is prod_{l masked} p_AR(x_l | x_<l), which is
    normalized (Z = 1 exactly, `self_normalized`) but is NOT the AR conditional: it drops the
    factors p_AR(x_l | x_<l) of the revealed tokens to the right of masked ones (the two agree
    only when every revealed token lies left of every masked one, as with a prefix prompt). On the
    exact toy of the tests the sampler with it stays 0.15-0.22 in total variation from p_AR at 2-4
    steps even with infinitely many candidates (EDLM.md section 2).
    The default is the whole sequence, as for the specs. `ar` maps x [N, L] to logits [N, L, V']
    scoring x[:, l] given x[:, :l].
    """

    def __init__(self, ar, mask_id: int, *, carry_over: bool = False):
        self.ar, self.mask_id, self.carry_over = ar, mask_id, carry_over

    @property
    def self_normalized(self) -> bool:
        """Z(xt) = 1 exactly: true for carry-over, whose target prod_{l masked} p_AR(x_l | x_<l)
        is normalized (the likelihood estimators then need no log Z draws)."""
        return self.carry_over

    def log_p_ar(self, x0: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        weight = (xt == self.mask_id) if self.carry_over else None
        return ops.sequence_logprob(self.ar(x0), x0, weight)

    def __call__(self, x0, xt, t, proposal_logp):
        return -self.log_p_ar(x0, xt) + proposal_logp.float()


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM as `x [N, L] -> logits [N, L, V']`, scoring every position: the
    sequence is read behind the model's BOS (or EOS) token (`checkpoint.load_hf_causal_lm` loads
    one from a local folder)."""

    def __init__(self, model, bos_id: int):
        super().__init__()
        self.model, self.bos_id = model, bos_id

    def forward(self, x):
        start = torch.full((x.shape[0], 1), self.bos_id, dtype=x.dtype, device=x.device)
        return self.model(input_ids=torch.cat([start, x[:, :-1]], dim=1)).logits


class EnergyModel(nn.Module):
    """forward(x0, xt, t) -> E [N]: a linear map of concat(embed(xt), embed(x0)), the denoiser's
    transformer blocks (adaLN on the noise level when time-conditioned), a final norm, mean
    pooling over positions and a two-layer head. The head's last layer starts at zero, so a fresh
    energy is 0 everywhere (EDLM = MDLM). Its target is mu exp(-E) / Z with mu the denoiser it
    was trained against (Z estimated by the likelihood code), whatever the sampling temperature."""

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
        self._proposal, self.num_negatives = (), 1  # the NCE proposal: see set_proposal

    @classmethod
    def from_denoiser(cls, denoiser, num_negatives: int = 1) -> EnergyModel:
        """An energy whose embedding, noise embedding and blocks start as copies of the denoiser's,
        trained by NCE against that denoiser (`set_proposal`)."""
        model = cls(copy.deepcopy(denoiser.cfg))
        model.vocab_embed.load_state_dict(denoiser.vocab_embed.state_dict())
        model.sigma_map.load_state_dict(denoiser.sigma_map.state_dict())
        model.blocks.load_state_dict(denoiser.blocks.state_dict())
        model.norm_final.load_state_dict(denoiser.output_layer.norm_final.state_dict())
        return model.set_proposal(denoiser, num_negatives)

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

    # --- NCE training (EDLM.md section 2) ---------------------------------------------------

    def set_proposal(self, denoiser: nn.Module, num_negatives: int = 1) -> EnergyModel:
        """Makes `loss` train this energy by NCE against `denoiser`'s own samples.

        The denoiser is frozen, always in eval mode (no dropout; EDLM.md trap 8) and kept outside
        this module's parameters and state dict (only the energy is trained and saved); `.to()`
        moves it along."""
        if num_negatives < 1:
            raise ValueError(f"EnergyModel: num_negatives must be >= 1, got {num_negatives}")
        for p in denoiser.parameters():
            p.requires_grad_(False)
        self._proposal = (denoiser.eval(),)  # a tuple: not registered as a submodule
        self.num_negatives = num_negatives
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for denoiser in getattr(self, "_proposal", ()):
            denoiser._apply(fn, *args, **kwargs)
        return self

    def loss(self, batch: dict):
        """NCE: positives are real x0 with xt ~ q(xt | x0) at the batch's times; negatives are
        `num_negatives` draws x0 ~ mu(. | xt) from the frozen proposal denoiser.
        loss = softplus(E_pos) + mean softplus(-E_neg)."""
        if not getattr(self, "_proposal", ()):
            raise RuntimeError("EnergyModel.loss: no proposal denoiser; call set_proposal first")
        (denoiser,) = self._proposal
        x0, t, noise = batch["x"], batch["t"], batch["noise"]
        mask_id, n = self.cfg.mask_id, self.num_negatives
        xt, _ = schedule.forward_mask(x0, t, noise, mask_id)  # [B, L]
        g = torch.Generator(device=x0.device).manual_seed(int(batch.get("seed", 0)))
        with torch.no_grad():
            logits = denoiser.eval()(xt, t)
            neg, _ = ops.masked_sample(logits, xt, mask_id, num_samples=n, generator=g)  # [B, n, L]
        B, L = x0.shape
        e_pos = self(x0, xt, t)  # [B]
        e_neg = self(
            neg.reshape(B * n, L), xt.repeat_interleave(n, 0), t.repeat_interleave(n)
        ).view(B, n)
        loss = F.softplus(e_pos).mean() + F.softplus(-e_neg).mean()
        accuracy = 0.5 * ((e_pos < 0).float().mean() + (e_neg > 0).float().mean())
        return loss, {
            "nce_accuracy": accuracy.detach(),
            "energy_gap": (e_neg.mean(1) - e_pos).mean().detach(),
            "energy_pos": e_pos.mean().detach(),
        }
