"""Models: the masked-diffusion denoiser, the autoregressive model, and (EDLM) energies.
Models know nothing of files or the command line: `edlm.checkpoint` loads them."""

from .ar import ARModel
from .compile import CompileError, compile_forwards
from .denoiser import Denoiser
from .energy import AREnergy, EnergyModel, HFCausalLM

__all__ = [
    "KINDS",
    "AREnergy",
    "ARModel",
    "CompileError",
    "Denoiser",
    "EnergyModel",
    "HFCausalLM",
    "build",
    "compile_forwards",
]

KINDS = {"denoiser": Denoiser, "ar": ARModel, "energy": EnergyModel}


def build(kind: str, cfg):
    """The model of `kind` (denoiser | ar | energy) from a ModelConfig (checked first)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    cfg.check()
    return KINDS[kind](cfg)
