"""Benchmark of edlm.ops.masked_sample (fp32 and bf16; K = 1 and 8) against the public EDLM
code's eager sampler (fp32 Gumbel-max, which also drops tails: EDLM.md trap 6), torch.compile of
that sampler (the strongest alternative a user has), and the memory floor (one read of the logits,
`logits.sum(-1)`, per dtype), at B = 4, L = 256, V = 50258, all masked; and with top_p = 0.9 /
top_k = 50 against the plain op (fp32, K = 1) on the same logits, and on peaked logits (30 tokens
of each row 12 nats above that flat bulk, as a trained model's head stands above its tail)."""

import pytest
import torch

from edlm import ops, reference

# The kernels' vector instruction sets on this CPU (DEFAULT, the scalar fallback, left out)
ISAS = [isa for isa in ops.cpu_capabilities() if isa != "default"] or ["default"]
B, L, V = 4, 256, 50258
MASK = V - 1
GROUP = f"masked_sample B={B} L={L} V={V}"


def public_eager_sampler(logits):
    """The public code's categorical sampler (its `_sample_categorical`), for timing only."""
    p = logits.softmax(-1)
    return (p / (1e-10 - (torch.rand_like(p) + 1e-10).log())).argmax(-1)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, L, V, generator=g) * 2.5
    logits[..., MASK] = float("-inf")  # SUBS: the denoiser never predicts the mask
    xt = torch.full((B, L), MASK)
    return logits, xt


@pytest.fixture(scope="module")
def peaked(data):
    logits, xt = data
    g = torch.Generator().manual_seed(1)
    head = torch.randint(0, V - 1, (B, L, 30), generator=g)
    return logits.clone().scatter_add_(-1, head, torch.full((B, L, 30), 12.0)), xt


def check(logits, xt, K, **truncation):
    tokens, logp = ops.masked_sample(
        logits, xt, MASK, num_samples=K, generator=torch.Generator().manual_seed(1), **truncation
    )
    assert tokens.shape == (B, K, L) and not torch.any(tokens == MASK)
    # Exact log-probabilities of the drawn tokens, on a slice, against the fp64 reference.
    probs = reference.masked_sample_probs(logits[:, :8], MASK, 1.0, **truncation).log()
    expect = probs.unsqueeze(1).expand(B, K, 8, V).gather(-1, tokens[:, :, :8, None])[..., 0]
    torch.testing.assert_close(logp[:, :, :8], expect.float(), rtol=0, atol=2e-5)


def test_eager_public_sampler(benchmark, table, data):
    logits, _ = data
    out = public_eager_sampler(logits)
    assert out.shape == (B, L) and not torch.any(out == MASK)
    table.add(
        benchmark,
        GROUP,
        "public eager Gumbel-max fp32 (K=1)",
        lambda: public_eager_sampler(logits),
        baseline=True,
    )


def test_compiled_public_sampler(benchmark, table, data):
    logits, _ = data
    compiled = torch.compile(public_eager_sampler)
    out = compiled(logits)
    assert out.shape == (B, L) and not torch.any(out == MASK)
    table.add(
        benchmark,
        GROUP,
        "torch.compile public Gumbel-max fp32",
        lambda: compiled(logits),
        role="compiled",
        rounds=5,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_floor(benchmark, table, data, dtype):
    logits = data[0].to(dtype).clone()
    logits[..., MASK] = 0.0
    torch.testing.assert_close(
        logits.sum(-1).double(), logits.double().sum(-1), rtol=2e-2, atol=2.0
    )
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    table.add(
        benchmark, GROUP, f"floor: logits.sum(-1) {name}", lambda: logits.sum(-1), role="floor"
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K", [1, 8])
def test_fused(benchmark, table, data, dtype, K, isa, monkeypatch):
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", isa)
    logits, xt = data
    logits = logits.to(dtype)
    check(logits, xt, K)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    table.add(
        benchmark,
        GROUP,
        f"edlm.ops.masked_sample {name} K={K} {isa}",
        lambda: ops.masked_sample(logits, xt, MASK, num_samples=K),
    )


TRUNCATION_GROUP = f"masked_sample truncation B={B} L={L} V={V} fp32 K=1"


@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_plain_for_truncation(benchmark, table, data, peaked, kind):
    logits, xt = data if kind == "flat" else peaked
    check(logits, xt, 1)
    table.add(
        benchmark,
        f"{TRUNCATION_GROUP} {kind} logits",
        "edlm.ops.masked_sample (no truncation)",
        lambda: ops.masked_sample(logits, xt, MASK),
        baseline=True,
        rounds=10,
    )


@pytest.mark.parametrize("kind", ["flat", "peaked"])
@pytest.mark.parametrize(
    "truncation", [{"top_p": 0.9}, {"top_k": 50}, {"top_p": 0.9, "top_k": 50}], ids=str
)
def test_truncated(benchmark, table, data, peaked, kind, truncation):
    logits, xt = data if kind == "flat" else peaked
    check(logits, xt, 1, **truncation)
    label = ", ".join(f"{k}={v}" for k, v in truncation.items())
    table.add(
        benchmark,
        f"{TRUNCATION_GROUP} {kind} logits",
        f"edlm.ops.masked_sample {label}",
        lambda: ops.masked_sample(logits, xt, MASK, **truncation),
    )
