"""Benchmark of edlm.ops.sequence_logprob (fp32, bf16) against the eager composite it replaces,
log_softmax + gather + weighted sum, torch.compile of that composite, and the memory floor (one
read of the logits, `logits.sum(-1)`, per dtype), at N = 4, L = 256, V = 50258."""

import pytest
import torch

from edlm import ops, reference

# The kernels' vector instruction sets on this CPU (DEFAULT, the scalar fallback, left out)
ISAS = [isa for isa in ops.cpu_capabilities() if isa != "default"] or ["default"]
N, L, V = 4, 256, 50258
GROUP = f"sequence_logprob N={N} L={L} V={V}"


def eager(logits, tokens, weight):
    return (logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0] * weight).sum(-1)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, L, V, generator=g) * 2.5
    tokens = torch.randint(0, V, (N, L), generator=g)
    weight = torch.ones(N, L)
    return logits, tokens, weight


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_composite(benchmark, table, data, compiled):
    """The eager composite (the baseline) and torch.compile of it (the compiled peer)."""
    logits, tokens, weight = data
    fn = torch.compile(eager) if compiled else eager
    torch.testing.assert_close(
        fn(logits, tokens, weight),
        reference.sequence_logprob(logits, tokens, weight),
        rtol=1e-5,
        atol=1e-2,
    )
    table.add(
        benchmark,
        GROUP,
        "torch.compile of that composite fp32" if compiled else "eager log_softmax+gather+sum fp32",
        lambda: fn(logits, tokens, weight),
        baseline=not compiled,
        role="compiled" if compiled else "",
        rounds=5 if compiled else None,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_floor(benchmark, table, data, dtype):
    logits = data[0].to(dtype)
    torch.testing.assert_close(
        logits.sum(-1).double(), logits.double().sum(-1), rtol=2e-2, atol=2.0
    )
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    table.add(
        benchmark, GROUP, f"floor: logits.sum(-1) {name}", lambda: logits.sum(-1), role="floor"
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused(benchmark, table, data, dtype, isa, monkeypatch):
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", isa)
    logits, tokens, weight = data
    logits = logits.to(dtype)
    out = ops.sequence_logprob(logits, tokens, weight)
    torch.testing.assert_close(
        out, reference.sequence_logprob(logits, tokens, weight), rtol=1e-6, atol=1e-3
    )
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    table.add(
        benchmark,
        GROUP,
        f"edlm.ops.sequence_logprob {name} {isa}",
        lambda: ops.sequence_logprob(logits, tokens, weight),
    )
