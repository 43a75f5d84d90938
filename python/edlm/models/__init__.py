"""Models: the masked-diffusion denoiser, the autoregressive model, and (EDLM) energies."""

from .ar import ARModel
from .denoiser import Denoiser

__all__ = ["ARModel", "Denoiser", "build"]


def build(kind: str, cfg):
    """The model of `kind` (denoiser | ar) from a ModelConfig."""
    kinds = {"denoiser": Denoiser, "ar": ARModel}
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(kinds))}")
    return kinds[kind](cfg)
