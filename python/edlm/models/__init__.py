"""Models: the masked-diffusion denoiser, the autoregressive model, and (EDLM) energies."""

from .ar import ARModel
from .denoiser import Denoiser
from .energy import AREnergy, EnergyModel, HFCausalLM, NCETrainer

__all__ = ["ARModel", "AREnergy", "Denoiser", "EnergyModel", "HFCausalLM", "NCETrainer", "build"]


def build(kind: str, cfg):
    """The model of `kind` (denoiser | ar | energy) from a ModelConfig."""
    kinds = {"denoiser": Denoiser, "ar": ARModel, "energy": EnergyModel}
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(kinds))}")
    return kinds[kind](cfg)
