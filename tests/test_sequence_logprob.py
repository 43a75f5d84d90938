"""Tests of edlm.ops.sequence_logprob against edlm.reference: values for every dtype and weight
kind, fp64-grade accumulation (EDLM.md trap 5), rows of weight 0 never read, awkward sizes,
torch integration and bad input."""

import pytest
import torch
from devices import HAS_CUDA

from edlm import ops, reference


def case(N, L, V, device, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, L, V, generator=g) * scale).to(dtype)
    tokens = torch.randint(0, V, (N, L), generator=g)
    return logits.to(device), tokens.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_kind", ["none", "bool", "float32", "float64"])
def test_matches_reference(device_isa, dtype, weight_kind):
    device = device_isa
    logits, tokens = case(3, 97, 111, device, dtype)
    weight = {
        "none": None,
        "bool": torch.rand(3, 97) < 0.5,
        "float32": torch.rand(3, 97),
        "float64": torch.rand(3, 97, dtype=torch.float64),
    }[weight_kind]
    if weight is not None:
        weight = weight.to(device)
    out = ops.sequence_logprob(logits, tokens, weight)
    assert out.shape == (3,) and out.dtype == torch.float32
    expect = reference.sequence_logprob(
        logits.cpu(), tokens.cpu(), None if weight is None else weight.cpu()
    )
    torch.testing.assert_close(out.cpu(), expect, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("V", [1, 2, 3, 111, 50258])
@pytest.mark.parametrize("L", [1, 97])
def test_awkward_sizes(device, V, L):
    logits, tokens = case(2, L, V, device, seed=V + L)
    out = ops.sequence_logprob(logits, tokens)
    expect = reference.sequence_logprob(logits.cpu(), tokens.cpu())
    torch.testing.assert_close(out.cpu(), expect, rtol=1e-6, atol=1e-4)
    if V == 1:
        assert torch.all(out == 0)


def test_accumulates_large_energies_exactly(device):
    # |sum| ~ 1e4 nats over 1024 positions: bf16 accumulation (spacing 64 there) or fp32 running
    # sums of bf16 terms would be off by whole nats; ours must agree with fp64 to fp32 rounding.
    logits, tokens = case(2, 1024, 300, device, torch.bfloat16, scale=8.0)
    out = ops.sequence_logprob(logits, tokens)
    expect = reference.sequence_logprob(logits.cpu(), tokens.cpu())
    assert expect.abs().min() > 3000
    torch.testing.assert_close(out.cpu(), expect, rtol=2e-7, atol=0)


def test_extreme_logits(device_isa):
    device = device_isa
    # Widely spread logits (beyond fp32 exp range in differences) and -inf entries.
    logits = torch.randn(2, 6, 5000) * 200
    logits[0, 0, 10:20] = float("-inf")
    logits[1, 2, :] = -1e30
    logits[1, 2, 7] = 1e30
    tokens = torch.randint(0, 5000, (2, 6))
    tokens[1, 2] = 7
    tokens[0, 0] = 3
    out = ops.sequence_logprob(logits.to(device), tokens.to(device))
    expect = reference.sequence_logprob(logits, tokens)
    torch.testing.assert_close(out.cpu(), expect, rtol=1e-6, atol=1e-3)


def test_neg_inf_token_gives_neg_inf(device):
    logits = torch.randn(1, 3, 10)
    logits[0, 1, 4] = float("-inf")
    tokens = torch.tensor([[0, 4, 2]])
    out = ops.sequence_logprob(logits.to(device), tokens.to(device))
    assert out.item() == float("-inf")


def test_nan_propagates(device):
    logits = torch.randn(2, 3, 10)
    logits[1, 0, 9] = float("nan")
    out = ops.sequence_logprob(
        logits.to(device), torch.zeros(2, 3, dtype=torch.long, device=device)
    )
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


@pytest.mark.parametrize("column,redo", [(3, False), (5000, False), (5000, True), (9998, False)])
def test_nan_propagates_from_anywhere_in_a_long_row(device_isa, column, redo):
    # Later blocks go through the streaming pass, which sees NaN in its sum of exponentials, also
    # when a large max in the block makes it redo the block against that max.
    logits = torch.randn(2, 3, 9999)
    logits[1, 0, column] = float("nan")
    if redo:
        logits[1, 0, column + 1] = 500.0
    out = ops.sequence_logprob(
        logits.to(device_isa), torch.zeros(2, 3, dtype=torch.long, device=device_isa)
    )
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


def test_zero_weight_positions_are_never_read(device):
    logits, tokens = case(2, 10, 50, device)
    weight = torch.ones(2, 10, device=device)
    weight[:, 5:] = 0
    poisoned = logits.clone()
    poisoned[:, 5:] = float("nan")
    tokens_padded = tokens.clone()
    tokens_padded[:, 5:] = -100  # padding ids are allowed where the weight is 0
    out = ops.sequence_logprob(poisoned, tokens_padded, weight)
    expect = ops.sequence_logprob(logits[:, :5], tokens[:, :5])
    torch.testing.assert_close(out, expect)


def test_rows_are_independent(device):
    logits, tokens = case(4, 20, 70, device)
    full = ops.sequence_logprob(logits, tokens)
    for n in range(4):
        torch.testing.assert_close(
            ops.sequence_logprob(logits[n : n + 1], tokens[n : n + 1]), full[n : n + 1]
        )


def test_non_contiguous(device):
    logits, tokens = case(3, 8, 40, device)
    lt = logits.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(
        ops.sequence_logprob(lt, tokens.t().contiguous().t()), ops.sequence_logprob(logits, tokens)
    )


def test_opcheck(device):
    logits, tokens = case(2, 5, 7, device)
    torch.library.opcheck(torch.ops.edlm.sequence_logprob.default, (logits, tokens, None))
    w = torch.rand(2, 5, device=device)
    torch.library.opcheck(torch.ops.edlm.sequence_logprob.default, (logits, tokens, w))


def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True)
    def energy(logits, tokens, weight):
        return -ops.sequence_logprob(logits.float() * 0.5, tokens, weight)

    logits, tokens = case(3, 9, 20, device)
    weight = torch.rand(3, 9, device=device) > 0.3
    torch.testing.assert_close(
        energy(logits, tokens, weight), -ops.sequence_logprob(logits * 0.5, tokens, weight)
    )


def test_column_strided_views_are_read_in_place(device):
    # A slice of the vocabulary at an odd offset: exactly the contiguous copy's result, no copy.
    logits, tokens = case(3, 9, 140, device, torch.bfloat16)
    view = logits[:, :, 3:120]  # [3, 9, 117], strides (1260, 140, 1), storage offset 3
    tokens = tokens % 117
    weight = torch.rand(3, 9, device=device) > 0.3
    want = ops.sequence_logprob(view.contiguous(), tokens, weight)
    with torch.profiler.profile() as prof:
        got = ops.sequence_logprob(view, tokens, weight)
    assert torch.equal(got, want)
    names = {e.name for e in prof.events()}
    assert "edlm::sequence_logprob" in names and "aten::contiguous" not in names, sorted(names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_same_rows_at_any_address_give_the_same_result(device, dtype):
    # Bit for bit, wherever the rows lie: storage offsets 1..7 move every row to another 16-byte
    # phase, which must not change how a row is split (and so how its fp32 sums round).
    logits, tokens = case(2, 5, 1001, device, dtype)
    want = ops.sequence_logprob(logits, tokens)
    for offset in range(1, 8):
        buf = torch.empty(offset + logits.numel(), dtype=dtype, device=device)
        view = buf[offset:].view(logits.shape)
        view.copy_(logits)
        assert torch.equal(ops.sequence_logprob(view, tokens), want), f"offset {offset}"


def test_empty_sequences_sum_to_zero(device):
    logits = torch.randn(3, 0, 7, device=device)
    tokens = torch.zeros(3, 0, dtype=torch.long, device=device)
    out = ops.sequence_logprob(logits, tokens)
    assert out.shape == (3,) and torch.equal(out, torch.zeros(3, device=device))


@pytest.mark.skipif(not HAS_CUDA, reason="no GPU or no CUDA kernels built")
def test_cuda_empty_sequences_beyond_the_grid_limit():
    # N = 2^31 sequences of length 0: zeros, with no kernel launch over N blocks (8 GiB output).
    N = 2**31
    logits = torch.empty(1, 0, 5, device="cuda").expand(N, 0, 5)
    tokens = torch.empty(1, 0, dtype=torch.long, device="cuda").expand(N, 0)
    out = ops.sequence_logprob(logits, tokens)
    assert out.shape == (N,) and not out.any().item()
    del out
    torch.cuda.empty_cache()


def bad(match, *args):
    with pytest.raises(RuntimeError, match=match):
        ops.sequence_logprob(*args)


def test_bad_input(device):
    logits, tokens = case(2, 3, 5, device)
    bad(r"sequence_logprob: logits must be 3-D \[N, L, V\]", logits[0], tokens)
    bad(r"sequence_logprob: tokens must be \[2, 3\]", logits, tokens[:, :2])
    bad(r"sequence_logprob: tokens must be int64, got Int", logits, tokens.int())
    bad(
        r"sequence_logprob: logits must be float32, bfloat16 or float16, got Long",
        tokens[..., None].expand(2, 3, 5),
        tokens,
    )
    bad(
        r"sequence_logprob: weight must be \[2, 3\]",
        logits,
        tokens,
        torch.ones(3, 2, device=device),
    )
    bad(
        r"sequence_logprob: weight must be bool or floating point, got Long",
        logits,
        tokens,
        torch.ones(2, 3, dtype=torch.long, device=device),
    )
    bad(r"sequence_logprob: V must be at least 1", logits[..., :0], tokens)


def test_bad_token_values_cpu():
    logits, tokens = case(2, 3, 5, "cpu")
    tokens[1, 1] = 5
    bad(r"sequence_logprob: tokens\[1, 1\] = 5 is outside \[0, V\) with V = 5", logits, tokens)
    tokens[1, 1] = -1
    bad(r"sequence_logprob: tokens\[1, 1\] = -1", logits, tokens)


@pytest.mark.skipif(not HAS_CUDA, reason="no GPU or no CUDA kernels built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_the_cpu_kernel(dtype):
    logits, tokens = case(4, 97, 50258, "cpu", dtype)
    weight = torch.rand(4, 97) > 0.3
    cpu = ops.sequence_logprob(logits, tokens, weight)
    gpu = ops.sequence_logprob(logits.cuda(), tokens.cuda(), weight.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-3)
