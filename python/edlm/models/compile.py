"""`--compile`: torch.compile of the models' hot forwards (the denoiser's, the AR model's, the
energies'), fullgraph, with the fused ops inside the compiled region where they take no generator
(`register_fake` lets dynamo trace them; an explicit torch.Generator argument is a graph break)."""

from __future__ import annotations

import functools

import torch

from .ar import ARModel
from .compile_error import CompileError, first_line
from .denoiser import Denoiser
from .energy import AREnergy, EnergyModel

__all__ = ["CompileError", "compile_forwards"]


# Per model type, the methods compiled (as instance attributes, so the parameters, their names and
# the state dict stay the module's own: no `_orig_mod.` prefix in a checkpoint). The denoiser's
# raw_logits is what its training loss calls; its forward (raw_logits and SUBS) is the sampler's.
# AREnergy.log_p_ar holds the AR forward and the fused sequence_logprob in one graph.
METHODS = {
    Denoiser: ("forward", "raw_logits"),
    ARModel: ("forward",),
    EnergyModel: ("forward",),
    AREnergy: ("log_p_ar",),
}


def _compiled(fn, name: str):
    try:
        compiled = torch.compile(fn, fullgraph=True)  # dynamic=None: see compile_forwards
    except Exception as e:  # unsupported Python or platform: raised by torch.compile itself
        raise CompileError(f"torch.compile is unavailable: {first_line(e)}") from e

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():  # inside another compiled method: trace the original
            return fn(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as e:  # tracing or the backend failed
            raise CompileError(f"torch.compile of {name} failed: {first_line(e)}") from e

    call.edlm_compiled = True
    return call


def compile_forwards(model):
    """Compiles `model`'s hot forwards in place (METHODS) and returns it; a no-op for models that
    are not ours (the oracle denoiser and energy, Hugging Face LMs, None), which stay eager.

    Each method is `torch.compile(fullgraph=True)` with automatic dynamic shapes: the first call
    compiles for its shapes, and a later call whose batch (or length) differs recompiles once
    with that dimension symbolic, after which any size reuses the graph. A sampling run calls
    each region at one shape ([B, L] for the denoiser, [B*k, L] for the energy; every window of a
    semi-autoregressive run has the context's length), so it compiles once per region; switching
    between train and eval mode, or grad and no-grad, compiles once more. An NCE energy's frozen
    proposal denoiser is compiled too. Compilation happens at the first call, which is slow
    (BENCHMARKS.md); there, a failure raises CompileError with torch's first line. Copy a model
    before compiling it, not after: the compiled methods are bound to the model they came from.
    An AR model's `generate` then runs its cached step compiled too, weights frozen in
    (ARModel.generate's `compile`), so an AR row of a sweep is compiled as well."""
    for kind, names in METHODS.items():
        if isinstance(model, kind):
            if isinstance(model, AREnergy) and not isinstance(model.ar, ARModel):
                return model  # a Hugging Face LM: not ours to trace
            for name in names:
                if getattr(getattr(model, name), "edlm_compiled", False):
                    continue  # compiled already (a model shared by two callers)
                qualified = f"{type(model).__name__}.{name}"
                setattr(model, name, _compiled(getattr(model, name), qualified))
            if isinstance(model, ARModel):  # generate's cached step too (ARModel.generate)
                model.compile_generate = True
            for proposal in getattr(model, "_proposal", ()):
                compile_forwards(proposal)
            return model
    return model
