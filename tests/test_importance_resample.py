"""Tests of edlm.ops.importance_resample against edlm.reference: ESS, the distribution of draws
per row (a flipped sign, mixed rows or drawn zero weights fail), determinism, batch invariance,
torch integration and bad input."""

import math

import pytest
import torch
from devices import HAS_CUDA
from statcheck import chi_square, chi_square_bound

from edlm import ops, reference


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def test_ess_matches_reference(device):
    torch.manual_seed(0)
    log_w = torch.randn(50, 7) * 3
    log_w[3, 2:] = float("-inf")
    log_w[4] = 0.0  # uniform: ESS = K
    log_w[5, :] = float("-inf")
    log_w[5, 6] = 1e3  # one-hot: ESS = 1
    index, ess = ops.importance_resample(log_w.to(device), num_samples=3)
    assert index.shape == (50, 3) and index.dtype == torch.int64
    assert ess.shape == (50,) and ess.dtype == torch.float32
    torch.testing.assert_close(
        ess.cpu(), reference.importance_resample(log_w)[1], rtol=1e-6, atol=0
    )
    assert ess[4].item() == pytest.approx(7.0) and ess[5].item() == pytest.approx(1.0)
    assert torch.all(index[5] == 6)


def test_distribution_per_row(device):
    # Rows that differ; each row's draws fit its own softmax, and not the flipped sign or the
    # neighbouring row (so a sign error or a batch mix-up fails).
    K, S = 12, 40000
    torch.manual_seed(1)
    log_w = torch.stack([torch.linspace(-2, 2, K), torch.linspace(2, -2, K), torch.randn(K) * 2])
    log_w[2, 5] = float("-inf")
    index, _ = ops.importance_resample(log_w.to(device), num_samples=S, generator=gen(3, device))
    probs = log_w.double().softmax(-1)
    for b in range(3):
        counts = torch.bincount(index[b].cpu(), minlength=K)
        stat, df = chi_square(counts, probs[b])
        assert stat < chi_square_bound(df), f"row {b}: chi2 {stat:.1f}, {df} df"
        flipped = torch.where(log_w[b].isfinite(), -log_w[b], log_w[b]).double().softmax(-1)
        for wrong in (flipped, probs[(b + 1) % 3]):
            assert chi_square(counts, wrong)[0] > chi_square_bound(df)
    assert torch.all(index[2] != 5)  # weight 0 is never drawn


def test_sign_on_two_candidates(device):
    # Lower energy = more likely: log_w = -E with E = [3, 0] puts 95.3% on candidate 1.
    energy = torch.tensor([[3.0, 0.0]]).expand(4, 2).contiguous()
    index, _ = ops.importance_resample(
        (-energy).to(device), num_samples=5000, generator=gen(0, device)
    )
    frac = (index == 1).double().mean().item()
    p = 1 / (1 + math.exp(-3))
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / 20000)


def test_tiny_weights_are_resolved(device):
    # A candidate at 1e-12 of the other: 1e6 draws must not show it; at 1e-4 it shows ~100 times.
    log_w = torch.tensor([[0.0, math.log(1e-4)]]).expand(10, 2).contiguous()
    index, _ = ops.importance_resample(
        log_w.to(device), num_samples=100_000, generator=gen(1, device)
    )
    hits = (index == 1).sum().item()
    assert abs(hits - 100) < 5 * 10


def test_determinism_and_batch_invariance(device):
    log_w = torch.randn(6, 9, device=device)
    a = ops.importance_resample(log_w, num_samples=8, generator=gen(5, device))
    b = ops.importance_resample(log_w, num_samples=8, generator=gen(5, device))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = ops.importance_resample(log_w, num_samples=8, generator=gen(6, device))
    assert not torch.equal(a[0], c[0])
    changed = log_w.clone()
    changed[0] = torch.randn(9, device=device)
    d = ops.importance_resample(changed, num_samples=8, generator=gen(5, device))
    assert torch.equal(a[0][1:], d[0][1:])
    head = ops.importance_resample(log_w[:3], num_samples=4, generator=gen(5, device))
    assert torch.equal(head[0], a[0][:3, :4])


def test_single_candidate(device):
    index, ess = ops.importance_resample(torch.randn(5, 1, device=device), num_samples=3)
    assert torch.all(index == 0) and torch.all(ess == 1)


def test_opcheck(device):
    log_w = torch.randn(3, 4, device=device)
    torch.library.opcheck(torch.ops.edlm.importance_resample.default, (log_w,), {"num_samples": 5})


def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True)
    def pick(energy):
        return ops.importance_resample(-energy / 0.5, num_samples=2)

    energy = torch.randn(4, 3, device=device)
    torch.manual_seed(0)
    index, ess = pick(energy)
    torch.manual_seed(0)
    eager = ops.importance_resample(-energy / 0.5, num_samples=2)
    assert torch.equal(index, eager[0])
    torch.testing.assert_close(ess, eager[1])


def bad(match, *args, **kwargs):
    with pytest.raises(RuntimeError, match=match):
        ops.importance_resample(*args, **kwargs)


def test_bad_input(device):
    log_w = torch.randn(3, 4, device=device)
    bad(r"importance_resample: log_weights must be 2-D \[B, K\]", log_w[0])
    bad(r"importance_resample: log_weights must be float32, got Double", log_w.double())
    bad(r"importance_resample: log_weights must be float32, got Half", log_w.half())
    bad(r"importance_resample: num_samples must be >= 1, got 0", log_w, num_samples=0)
    bad(r"importance_resample: log_weights needs at least one candidate", log_w[:, :0])


def test_bad_values_cpu():
    log_w = torch.randn(3, 4)
    log_w[1, 2] = float("nan")
    bad(r"importance_resample: log_weights\[1, 2\] = nan", log_w)
    log_w[1, 2] = float("inf")
    bad(r"importance_resample: log_weights\[1, 2\] = inf", log_w)
    log_w[1] = float("-inf")
    bad(r"importance_resample: log_weights\[1\] is -inf for every candidate", log_w)


@pytest.mark.skipif(not HAS_CUDA, reason="no GPU or no CUDA kernels built")
def test_cuda_matches_the_cpu_kernel():
    log_w = torch.randn(64, 33) * 4
    log_w[3, 5:] = float("-inf")
    _, ess_cpu = ops.importance_resample(log_w, num_samples=2)
    index, ess_gpu = ops.importance_resample(log_w.cuda(), num_samples=2)
    torch.testing.assert_close(ess_gpu.cpu(), ess_cpu, rtol=1e-6, atol=0)
    assert torch.all(index[3] < 5)
