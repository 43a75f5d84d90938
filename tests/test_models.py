"""Tests of the models: SUBS output, causality, the NELBO estimator against an exact computation,
config overrides, and loading the public MDLM checkpoint format from a local folder."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from edlm import schedule
from edlm.config import ModelConfig, TrainConfig, apply_overrides, preset
from edlm.models import ARModel, Denoiser
from edlm.models.denoiser import from_mdlm

SMALL = ModelConfig(vocab_size=6, length=8, dim=32, n_heads=2, n_layers=2, cond_dim=16, dropout=0.0)


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_denoiser_subs_output():
    model = randomize(Denoiser(SMALL)).eval()
    xt = torch.tensor([[5, 1, 5, 2, 0, 5, 5, 3]])
    logp = model(xt, torch.tensor([0.5]))
    assert logp.shape == (1, 8, 6)
    masked = xt == 5
    assert torch.all(logp[..., 5] == float("-inf"))  # the mask is never predicted
    torch.testing.assert_close(logp[masked].exp().sum(-1), torch.ones(int(masked.sum())))
    # Unmasked positions carry over with probability 1.
    carried = logp[~masked]
    assert torch.all(carried.gather(-1, xt[~masked][:, None]) == 0)
    assert torch.all(carried.exp().sum(-1) == 1)


def test_time_conditioning_switch():
    cond = randomize(Denoiser(ModelConfig(**{**SMALL.__dict__, "time_conditioning": True}))).eval()
    xt = torch.full((1, 8), 5)
    assert not torch.allclose(cond(xt, torch.tensor([0.2])), cond(xt, torch.tensor([0.9])))
    plain = randomize(Denoiser(SMALL)).eval()
    torch.testing.assert_close(plain(xt, torch.tensor([0.2])), plain(xt, torch.tensor([0.9])))


def test_ar_is_causal_and_scores_every_position():
    model = randomize(ARModel(SMALL)).eval()
    x = torch.randint(0, 5, (2, 8))
    logits = model(x)
    assert logits.shape == (2, 8, 6) and torch.all(logits[..., 5] == float("-inf"))
    y = x.clone()
    y[:, 5] = (x[:, 5] + 1) % 5
    changed = model(y)
    torch.testing.assert_close(logits[:, :6], changed[:, :6])  # positions <= 5 don't see x[5]
    assert not torch.allclose(logits[:, 6:], changed[:, 6:])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ar_generate_draws_from_the_model(temperature):
    """The empirical distribution of generated sequences (V = 3 real tokens, L = 3: 27 outcomes)
    fits exp(sum_l log softmax(logits / T)) of the model's own forward: a shifted context, a wrong
    temperature or a dropped position would not fit."""
    import itertools

    from statcheck import chi_square, chi_square_bound

    cfg = ModelConfig(vocab_size=4, length=3, dim=32, n_heads=2, n_layers=2, cond_dim=16, dropout=0.0)
    model = randomize(ARModel(cfg), seed=3).eval()
    all_x = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        logp = (model(all_x).double() / temperature).log_softmax(-1)
    probs = logp.gather(-1, all_x[..., None]).squeeze(-1).sum(-1).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-9)
    x = model.generate(20000, temperature=temperature, generator=torch.Generator().manual_seed(1))
    assert x.shape == (20000, 3) and x.max() < 3
    counts = torch.bincount(x[:, 0] * 9 + x[:, 1] * 3 + x[:, 2], minlength=27)
    stat, df = chi_square(counts, probs)
    assert stat < chi_square_bound(df), (stat, df)
    # the same generator state gives the same samples
    again = model.generate(20000, temperature=temperature, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(2, temperature=0.0)


def test_nelbo_estimator_matches_exact_integral():
    # A denoiser whose prediction depends on xt through its number of masks: the exact NELBO is
    # an integral over t of a sum over the 2^L masks, done here by quadrature; the training
    # loss (antithetic t, Bernoulli masks, 1/t weight) must agree with it on average.
    L, V = 3, 4  # 3 real tokens + mask
    cfg = ModelConfig(vocab_size=V, length=L, dim=8, n_heads=1, n_layers=1, cond_dim=8, dropout=0.0)
    table = torch.tensor([[0.0, 1.0, 2.0, 0.0], [1.5, 0.0, -1.0, 0.0], [0.3, 0.2, 0.1, 0.0], [2.0, -2.0, 0.5, 0.0]])

    class Toy(Denoiser):
        def raw_logits(self, xt, t):
            count = (xt == self.mask_id).sum(-1)  # [B]
            return table[count].unsqueeze(1).expand(xt.shape[0], L, V).clone()

    model = Toy(cfg)
    x0 = torch.tensor([2, 0, 1])
    logq = table.clone()
    logq[:, V - 1] = float("-inf")
    logq = logq.log_softmax(-1)  # [count, V]

    def exact_integrand(t):
        p = (1 - schedule.EPS) * t
        total = 0.0
        for bits in range(1 << L):
            masked = [(bits >> l) & 1 for l in range(L)]
            k = sum(masked)
            prob = p**k * (1 - p) ** (L - k)
            total += prob * sum(-logq[k, x0[l]].item() for l in range(L) if masked[l])
        return total / t

    ts = torch.linspace(schedule.T_MIN, 1.0, 20001, dtype=torch.float64)
    vals = torch.tensor([exact_integrand(t.item()) for t in ts[::100]], dtype=torch.float64)
    exact = torch.trapezoid(vals, ts[::100]).item() / (1 - schedule.T_MIN) / L  # per token

    g = torch.Generator().manual_seed(0)
    B, rounds = 1024, 64
    means = []
    for r in range(rounds):
        u = torch.rand((), generator=g).item()
        t = schedule.antithetic_times(u, torch.arange(B), B)
        loss, _ = model.loss({"x": x0.expand(B, L), "t": t, "noise": torch.rand(B, L, generator=g)})
        means.append(loss.item())
    means = torch.tensor(means, dtype=torch.float64)
    estimate, stderr = means.mean().item(), means.std().item() / rounds**0.5
    assert stderr < 0.01 * exact  # precise enough that a wrong weight or mask rate fails
    assert abs(estimate - exact) < 4 * stderr, (estimate, exact, stderr)


def test_antithetic_times_cover_the_interval():
    t = schedule.antithetic_times(0.3, torch.arange(8), 8)
    assert torch.all((t >= schedule.T_MIN) & (t <= 1))
    gaps = t.sort().values.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, (1 - schedule.T_MIN) / 8))


def test_overrides_are_type_checked():
    cfg = TrainConfig()
    apply_overrides(cfg, {"steps": "10", "lr": "1e-3", "model.dim": "64", "model.time_conditioning": "true"})
    assert cfg.steps == 10 and cfg.lr == 1e-3 and cfg.model_config.dim == 64 and cfg.model_config.time_conditioning
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        apply_overrides(cfg, {"stepz": "3"})
    with pytest.raises(ValueError, match="config key 'steps' expects an integer, got 'ten'"):
        apply_overrides(cfg, {"steps": "ten"})
    with pytest.raises(ValueError, match="unknown config key 'model.width'"):
        apply_overrides(cfg, {"model.width": "3"})
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")


def mdlm_state_dict(cfg: ModelConfig):
    """A state dict with the public MDLM (Hugging Face mdlm-owt) key names and shapes."""
    D, C, V, F = cfg.dim, cfg.cond_dim, cfg.vocab_size, cfg.mlp_ratio * cfg.dim
    s = {
        "backbone.vocab_embed.embedding": (V, D),
        "backbone.sigma_map.mlp.0.weight": (C, 256), "backbone.sigma_map.mlp.0.bias": (C,),
        "backbone.sigma_map.mlp.2.weight": (C, C), "backbone.sigma_map.mlp.2.bias": (C,),
        "backbone.rotary_emb.inv_freq": (D // cfg.n_heads // 2,),
        "backbone.output_layer.norm_final.weight": (D,),
        "backbone.output_layer.linear.weight": (V, D), "backbone.output_layer.linear.bias": (V,),
        "backbone.output_layer.adaLN_modulation.weight": (2 * D, C),
        "backbone.output_layer.adaLN_modulation.bias": (2 * D,),
    }
    for i in range(cfg.n_layers):
        b = f"backbone.blocks.{i}."
        s.update({
            b + "norm1.weight": (D,), b + "attn_qkv.weight": (3 * D, D), b + "attn_out.weight": (D, D),
            b + "norm2.weight": (D,), b + "mlp.0.weight": (F, D), b + "mlp.0.bias": (F,),
            b + "mlp.2.weight": (D, F), b + "mlp.2.bias": (D,),
            b + "adaLN_modulation.weight": (6 * D, C), b + "adaLN_modulation.bias": (6 * D,),
        })
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) * 0.1 for k, shape in s.items()}


def test_loads_public_mdlm_checkpoint_format(tmp_path):
    cfg = ModelConfig(vocab_size=50, length=16, dim=48, n_heads=3, n_layers=2, cond_dim=24)
    state = mdlm_state_dict(cfg)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "mdlm", "vocab_size": 50, "model_length": 16, "hidden_dim": 48, "cond_dim": 24,
        "n_blocks": 2, "n_heads": 3, "dropout": 0.1, "time_conditioning": False,
    }))
    model = from_mdlm(tmp_path)
    assert model.cfg.n_layers == 2 and model.cfg.dim == 48 and model.cfg.vocab_size == 50
    torch.testing.assert_close(model.blocks[1].attn_qkv.weight, state["backbone.blocks.1.attn_qkv.weight"])
    out = model(torch.full((2, 16), 49), torch.ones(2))
    assert out.shape == (2, 16, 50) and torch.isfinite(out[..., :49]).all()
    # Same weights through the .bin route (loaded with weights_only=True).
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    torch.testing.assert_close(from_mdlm(tmp_path)(torch.full((2, 16), 49), torch.ones(2)), out)


def test_mdlm_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MDLM checkpoint folder not found"):
        from_mdlm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        from_mdlm(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not an MDLM DiT checkpoint"):
        from_mdlm(tmp_path)


def test_presets():
    tiny, small = preset("tiny"), preset("small")
    assert (small.n_layers, small.dim, small.n_heads, small.vocab_size) == (12, 768, 12, 50258)
    n = sum(p.numel() for p in Denoiser(tiny).parameters())
    assert n < 5e6
    assert math.isclose(schedule.mask_prob(torch.tensor(1.0)).item(), 1 - schedule.EPS, rel_tol=1e-6)
