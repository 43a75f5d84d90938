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
        masked = noise < schedule.mask_prob(t)[:, None]  # [B, L]
        xt = torch.where(masked, torch.full_like(x0, self.mask_id), x0)
        logits = self.raw_logits(xt, t)
        logits[..., self.mask_id] = float("-inf")
        nll = F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view_as(x0)
        nelbo = (nll * masked).sum(-1) * schedule.loss_weight(t)  # [B] nats per sequence
        per_token = nelbo / x0.shape[1]
        return per_token.mean(), {"nelbo_per_token": per_token.detach().mean()}


def from_mdlm(path, device="cpu") -> Denoiser:
    """Loads the public MDLM checkpoint format (Hugging Face `kuleshov-group/mdlm-owt`: a folder
    with config.json and model.safetensors or pytorch_model.bin, keys `backbone.<dit name>`) from
    a local path into a Denoiser. Nothing is downloaded."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"MDLM checkpoint folder not found: {folder}")
    hf = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if (folder / "model.safetensors").is_file():
        state = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    state.pop("rotary_emb.inv_freq", None)  # recomputed, never learned
    emb = state.get("vocab_embed.embedding")
    if emb is None:
        raise ValueError(f"{folder} is not an MDLM DiT checkpoint: no vocab_embed.embedding")
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    cfg = ModelConfig(
        vocab_size=emb.shape[0],
        length=int(hf.get("model_length", 1024)),
        dim=emb.shape[1],
        n_heads=int(hf.get("n_heads", 12)),
        n_layers=n_layers,
        cond_dim=state["sigma_map.mlp.2.weight"].shape[0],
        mlp_ratio=state["blocks.0.mlp.0.weight"].shape[0] // emb.shape[1],
        dropout=float(hf.get("dropout", 0.1)),
        time_conditioning=bool(hf.get("time_conditioning", False)),
    )
    model = Denoiser(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder} does not match MDLM's DiT layout: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()
