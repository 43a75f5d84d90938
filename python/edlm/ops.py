"""The fused ops of edlm, as typed wrappers over torch.ops.edlm.* (registered by edlm._C).

Kernels: C++ for the CPU (csrc/), CUDA where built (cuda/); the dispatcher picks by device.
Each op has a plain PyTorch reference of the same name in `edlm.reference`.
"""

from __future__ import annotations

import torch

from . import _C

__all__ = [
    "cpu_capabilities",
    "cpu_capability",
    "importance_resample",
    "masked_sample",
    "sequence_logprob",
]


def masked_sample(
    logits: torch.Tensor,
    xt: torch.Tensor,
    mask_id: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw clean tokens for every masked position of ``xt`` from the denoiser's logits.

    The proposal draw of importance sampling (K candidates) and the clean-token draw of the
    reverse step (K = 1). Which positions a step reveals is the sampler's choice:
    `edlm.sampling` draws every position's reveal time up front.

    Parameters
    ----------
    logits : Tensor [B, L, V], float32, bfloat16 or float16
        Denoiser logits; V includes the mask token. The mask column is never drawn and its value
        is ignored. Unmasked positions are never read. Any layout whose last stride is 1 is read
        in place (others are copied first); results do not depend on where the rows lie.
    xt : Tensor [B, L], int64
        Current sequence; positions equal to ``mask_id`` are masked. Ids must lie in [0, V).
    mask_id : int
        Id of the mask token, in [0, V).
    num_samples : int
        K, the number of independent draws per row (candidates).
    temperature : float
        Tokens are drawn from ``softmax(logits / temperature)`` over the real tokens; in about
        [4.2e-39, 8.5e37], where ``1 / T`` and ``log2(e) / T`` are normal float32 numbers.
    top_p : float
        In (0, 1]; 1 (default) is off. Keep the tokens whose logit is >= t, for the largest real
        logit t such that the tokens with logits >= t hold at least ``top_p`` of the probability
        (the smallest such head set; all tokens tied at t are kept). With ``top_k`` too, top-k is
        applied first and ``top_p`` is a share of the renormalized top-k distribution (the
        Hugging Face / vLLM order). The masses compared are the kernel's (fp64 sums of fp32
        exponentials), so a ``top_p`` within about 1e-6 of a cumulative mass may fall either way.
    top_k : int
        0 (default) or at least the number of real tokens: off. Otherwise keep the tokens whose
        logit is >= the k-th largest real logit (all tokens tied with it too).
    generator : torch.Generator, optional
        Source of randomness (default: the device's default generator). Each call draws one
        seed from it; every draw is then Philox keyed by (row, sample, position), so a row's
        output depends only on the seed, its row index and its own inputs, never on other rows.

    Returns
    -------
    tokens : Tensor [B, K, L], int64
        ``xt`` where unmasked (carry-over); a drawn token (never ``mask_id``) where masked.
    logp : Tensor [B, K, L], float32
        Log-probability of each drawn token under the law it was drawn from: ``softmax(logits /
        temperature)`` without the mask column, restricted to the kept tokens and renormalized
        when ``top_k`` or ``top_p`` truncate; 0 where unmasked.

    The kept set compares raw logit values with the threshold logit, so it is the same on every
    device and for every dtype. Sampling is exact inverse-CDF with 53-bit uniforms and fp64
    cumulative masses, so tokens far below 2^-24 of the top probability (inside the kept set) are
    drawn at their true rate. With ``top_p = 1`` and ``top_k = 0`` the draws are the untruncated
    op's, draw for draw. Reference: `edlm.reference.masked_sample`.
    """
    return torch.ops.edlm.masked_sample(
        logits,
        xt,
        mask_id,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        generator=generator,
    )


def sequence_logprob(
    logits: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted sum over positions of ``log_softmax(logits)[token]``, per sequence.

    The batched energy reduction: AR log-likelihoods of K candidates, or a proposal's log-prob.

    Parameters
    ----------
    logits : Tensor [N, L, V], float32, bfloat16 or float16
        No [N, L, V] temporary is made; rows with weight 0 are never read. Any layout whose last
        stride is 1 is read in place (others are copied first).
    tokens : Tensor [N, L], int64
        Ids in [0, V) wherever the weight is nonzero (anything, e.g. padding, where it is 0).
    weight : Tensor [N, L], bool or floating point, optional
        Per-position weight (default all ones).

    Returns
    -------
    Tensor [N], float32
        ``sum_l weight[n, l] * log_softmax(logits[n, l])[tokens[n, l]]``, accumulated in fp64.
        Reference: `edlm.reference.sequence_logprob`.
    """
    return torch.ops.edlm.sequence_logprob(logits, tokens, weight)


def importance_resample(
    log_weights: torch.Tensor,
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw candidate indices in proportion to ``exp(log_weights)``, per row, and the ESS.

    Parameters
    ----------
    log_weights : Tensor [B, K], float32
        Unnormalized log-weights; ``-inf`` is weight 0. A row may not be all ``-inf``; NaN and
        ``+inf`` are errors.
    num_samples : int
        Draws per row, i.i.d. (with replacement).
    generator : torch.Generator, optional
        As in `masked_sample`: one seed per call, Philox keyed by (row, draw).

    Returns
    -------
    index : Tensor [B, num_samples], int64
        Draws from ``softmax(log_weights[b])``.
    ess : Tensor [B], float32
        Effective sample size ``1 / sum_k w_k^2`` of the normalized weights, in [1, K].
        Reference: `edlm.reference.importance_resample`.
    """
    return torch.ops.edlm.importance_resample(
        log_weights, num_samples=num_samples, generator=generator
    )


def cpu_capability() -> str:
    """The instruction set the CPU kernels use: 'avx512', 'avx2' or 'default', the widest this CPU
    has unless the environment variable EDLM_CPU_CAPABILITY names another."""
    return _C.cpu_capability()


def cpu_capabilities() -> list[str]:
    """Every instruction set the CPU kernels can use on this CPU, narrowest first."""
    return list(_C.cpu_capabilities())


@torch.library.register_fake("edlm::masked_sample")
def _masked_sample_fake(
    logits, xt, mask_id, *, num_samples=1, temperature=1.0, top_p=1.0, top_k=0, generator=None
):
    torch._check(
        logits.dim() == 3, lambda: f"masked_sample: logits must be 3-D, got {logits.shape}"
    )
    B, L, _ = logits.shape
    shape = (B, num_samples, L)
    return (
        logits.new_empty(shape, dtype=torch.int64),
        logits.new_empty(shape, dtype=torch.float32),
    )


@torch.library.register_fake("edlm::sequence_logprob")
def _sequence_logprob_fake(logits, tokens, weight=None):
    torch._check(
        logits.dim() == 3, lambda: f"sequence_logprob: logits must be 3-D, got {logits.shape}"
    )
    return logits.new_empty((logits.shape[0],), dtype=torch.float32)


@torch.library.register_fake("edlm::importance_resample")
def _importance_resample_fake(log_weights, *, num_samples=1, generator=None):
    torch._check(
        log_weights.dim() == 2,
        lambda: f"importance_resample: log_weights must be 2-D, got {log_weights.shape}",
    )
    B = log_weights.shape[0]
    return (
        log_weights.new_empty((B, num_samples), dtype=torch.int64),
        log_weights.new_empty((B,), dtype=torch.float32),
    )
