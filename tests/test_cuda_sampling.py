"""CUDA end to end (run by benchmarks/gpu_check.sh; skipped without a GPU): edlm.sample with MDLM
and EDLM on the exact toy (V = 3, L = 4) drawn on CUDA fits both the sampler's exact law and the
CPU's draws, a tiny transformer samples on CUDA, and one EDLM importance-sampling step (the three
ops) is captured in a CUDA graph and replayed, matching eager draw for draw."""

import pytest
import torch
from devices import HAS_CUDA
from sampler_law import exact_law, seq_index
from statcheck import chi_square, chi_square_bound
from toy import ENERGY, MASK, L, ToyDenoiser, V

import edlm
from edlm import ops
from edlm.config import ModelConfig
from edlm.models import Denoiser

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="no GPU or no CUDA kernels built")

DRAWS = 200_000


class DeviceToy(ToyDenoiser):
    """The toy denoiser on any device: the table is evaluated on the CPU, the logits are returned
    on xt's device (a host round trip per step, which a test can afford)."""

    def __call__(self, xt, t):
        return super().__call__(xt.cpu(), t.cpu()).to(xt.device)


def toy_energy(x0, xt, t, proposal_logp):
    return ENERGY[seq_index(x0.cpu())].to(x0.device)


def toy_counts(device, seed, **kw):
    x = edlm.sample(
        DeviceToy(),
        batch_size=DRAWS,
        length=L,
        mask_id=MASK,
        steps=2,
        final="sample",
        generator=torch.Generator(device=device).manual_seed(seed),
        device=device,
        **kw,
    )
    assert x.device.type == device
    return torch.bincount(seq_index(x.cpu()), minlength=V**L).double()


def two_sample_stat(a, b):
    keep = (a + b) > 0
    return (((a - b) ** 2) / (a + b))[keep].sum().item(), int(keep.sum()) - 1


@pytest.mark.parametrize("k", [1, 4])
def test_mdlm_and_edlm_on_cuda_fit_the_exact_law_and_the_cpu(k):
    kw = {} if k == 1 else {"energy": toy_energy, "num_candidates": k}
    cuda = toy_counts("cuda", seed=1, **kw)
    cpu = toy_counts("cpu", seed=2, **kw)
    stat, df = two_sample_stat(cuda, cpu)
    assert stat < chi_square_bound(df), f"CUDA against CPU draws: chi2 {stat:.1f}, {df} df"
    if k == 1:
        law = exact_law(ToyDenoiser(), L, 2)
        stat, df = chi_square(cuda, law)
        assert stat < chi_square_bound(df), f"CUDA MDLM against its law: chi2 {stat:.1f}"
        # The same draws against EDLM's target must fail, so the comparison has teeth.
        edlm_law = exact_law(ToyDenoiser(), L, 2, energy=toy_energy, num_candidates=2)
        assert chi_square(cuda, edlm_law)[0] > chi_square_bound(df)
    else:
        mdlm = toy_counts("cpu", seed=3)
        assert two_sample_stat(cuda, mdlm)[0] > chi_square_bound(df), "EDLM draws look like MDLM's"


def test_tiny_transformer_samples_on_cuda():
    cfg = ModelConfig(vocab_size=6, length=16, dim=32, n_heads=2, n_layers=2, cond_dim=16)
    torch.manual_seed(0)
    model = Denoiser(cfg).eval().cuda()
    mask_id = cfg.vocab_size - 1

    def energy(x0, xt, t, proposal_logp):
        return x0.float().sum(-1)  # prefers small ids: IS must move the mean down

    def run(seed, **kw):
        return edlm.sample(
            model,  # its device (CUDA) is where sampling runs
            batch_size=256,
            length=cfg.length,
            mask_id=mask_id,
            steps=8,
            generator=torch.Generator(device="cuda").manual_seed(seed),
            **kw,
        )

    a, b = run(0), run(0)
    assert a.is_cuda and torch.equal(a, b)
    assert bool(((a >= 0) & (a < mask_id)).all())
    x = run(1, energy=energy, num_candidates=8)
    assert bool(((x >= 0) & (x < mask_id)).all())
    assert x.float().mean() < a.float().mean() - 0.1


def test_cuda_model_with_a_cpu_generator_is_refused_up_front():
    model = Denoiser(ModelConfig(vocab_size=6, length=8, dim=32, n_heads=2, n_layers=2)).cuda()
    with pytest.raises(ValueError, match=r"the generator is on cpu but sampling runs on cuda"):
        edlm.sample(model, batch_size=2, length=8, mask_id=5, generator=torch.Generator())


def test_cuda_graph_capture_and_replay_of_an_edlm_step():
    # One importance-sampling step of EDLM: K candidates per row (masked_sample), their energies
    # (sequence_logprob), one kept per row (importance_resample). Captured once, replayed twice
    # from a reseeded default generator: the same draws as two eager steps from the same seed, and
    # a replay reads the static inputs' current values.
    torch.manual_seed(0)
    B, Lx, Vx, K, mask_id = 4, 33, 101, 8, 100
    logits = torch.randn(B, Lx, Vx, device="cuda") * 2
    x = torch.full((B, Lx), mask_id, device="cuda")
    x[:, ::5] = 7
    energy_logits = torch.randn(B * K, Lx, Vx, device="cuda")

    def step():
        cand, logp = ops.masked_sample(logits, x, mask_id, num_samples=K)  # [B, K, L]
        e = -ops.sequence_logprob(energy_logits, cand.reshape(B * K, Lx)).reshape(B, K)
        index, ess = ops.importance_resample(-e, num_samples=1)  # [B, 1], [B]
        x0 = cand.gather(1, index[:, :, None].expand(B, 1, Lx))[:, 0]  # [B, L]
        return cand, logp, index, ess, torch.where(x == mask_id, x0, x)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()

    def replay():
        graph.replay()
        return [t.clone() for t in static_out]

    torch.cuda.manual_seed(123)
    first, second = replay(), replay()
    torch.cuda.manual_seed(123)
    eager_first, eager_second = step(), step()
    for got, want in ((first, eager_first), (second, eager_second)):
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    assert not torch.equal(first[0], second[0]), "the generator did not advance between replays"
    # New values in the static inputs: the replay uses them.
    logits.copy_(torch.randn(B, Lx, Vx, device="cuda") * 2)
    torch.cuda.manual_seed(7)
    got = replay()
    torch.cuda.manual_seed(7)
    for g, w in zip(got, step()):
        assert torch.equal(g, w)
    torch.cuda.synchronize()
