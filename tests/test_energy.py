"""Tests of the energies and the sampling command: NCE training lowers its loss and ranks real text
below the denoiser's proposals with the denoiser frozen in eval mode; a Hugging Face causal LM
(tiny, random, built offline) serves as an AR energy; `edlm sample` with each kind of energy."""

import json

import pytest
import torch

from edlm import checkpoint, ops, schedule
from edlm.cli import main
from edlm.config import ModelConfig, TrainConfig
from edlm.corpora import corpus_documents
from edlm.data import load_dataset
from edlm.models import AREnergy, EnergyModel
from edlm.train import step_noise, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny trained denoiser, AR model and NCE energy on a slice of Austen."""
    root = tmp_path_factory.mktemp("energy")
    import os

    os.environ["EDLM_CACHE"] = str(root / "cache")
    (root / "train.txt").write_text("\n".join(corpus_documents("austen", "train"))[:80_000])
    (root / "valid.txt").write_text("\n".join(corpus_documents("austen", "valid"))[:8_000])
    common = dict(
        data=str(root / "train.txt"),
        valid_data=str(root / "valid.txt"),
        batch_size=8,
        warmup_steps=5,
        block_size=64,
        eval_every=1000,
        eval_batches=1,
        log_every=1,
        lr=3e-3,
        ema=0.0,
        device="cpu",
        model_config=ModelConfig(dim=32, n_heads=2, n_layers=1, cond_dim=16, dropout=0.1),
    )
    train(
        TrainConfig(model="denoiser", out=str(root / "den"), steps=60, save_every=60, **common),
        progress=False,
    )
    train(
        TrainConfig(model="ar", out=str(root / "ar"), steps=30, save_every=30, **common),
        progress=False,
    )
    common.update(lr=1e-2, batch_size=16, eval_batches=4)  # the energy learns slowly at first
    nce = TrainConfig(
        model="energy",
        out=str(root / "nce"),
        steps=120,
        save_every=120,
        init_from=str(root / "den"),
        num_negatives=2,
        **common,
    )
    train(nce, progress=False)
    return root


@pytest.mark.slow  # trains three models (module fixture)
def test_nce_lowers_its_loss_and_ranks_real_text_lower(runs):
    lines = [json.loads(x) for x in (runs / "nce" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == pytest.approx(
        2 * 0.6931, abs=0.05
    )  # a fresh energy is 0: log 2 + log 2
    assert lines[-1]["valid_loss"] < 2 * 0.6931 - 0.01  # held-out NCE loss below the fresh energy's
    assert sum(r["energy_gap"] for r in lines[-20:]) / 20 > 0
    # On held-out text: real sequences get lower energy than the denoiser's proposals for the
    # same xt, pair by pair, more often than not.
    energy, _cfg = checkpoint.load_model(runs / "nce")
    denoiser, _ = checkpoint.load_model(runs / "den")
    valid = load_dataset(str(runs / "valid.txt"), tokenizer="char", shuffle=False, block_size=64)
    x = next(valid.batches(96))
    t, noise = step_noise(123, 0, 96, 64, torch.arange(96))
    xt, _ = schedule.forward_mask(x, t, noise, 27)
    with torch.no_grad():
        neg, _ = ops.masked_sample(
            denoiser(xt, t), xt, 27, num_samples=8, generator=torch.Generator().manual_seed(0)
        )
        e_pos = energy(x, xt, t)
        e_neg = energy(neg.flatten(0, 1), xt.repeat_interleave(8, 0), t.repeat_interleave(8)).view(
            96, 8
        )
    pairs = (e_pos[:, None] < e_neg).float().mean().item()
    assert (e_neg.mean() - e_pos.mean()).item() > 0 and pairs > 0.5, pairs


@pytest.mark.slow  # trains three models (module fixture)
def test_denoiser_stays_frozen_in_eval_mode(runs):
    denoiser, _ = checkpoint.load_model(runs / "den")
    energy = EnergyModel.from_denoiser(denoiser).train()
    (proposal,) = energy._proposal
    assert energy.training and not proposal.training
    assert all(not p.requires_grad for p in proposal.parameters())
    # Only the energy is trained and saved: the proposal is no submodule of it.
    assert set(energy.state_dict()) == set(EnergyModel(energy.cfg).state_dict())
    assert {id(p) for p in energy.parameters()}.isdisjoint(id(p) for p in proposal.parameters())
    energy.to(torch.float64)  # .to() moves the proposal along
    assert next(proposal.parameters()).dtype == torch.float64
    energy.to(torch.float32)
    x = torch.randint(0, 27, (4, 64))
    t, noise = step_noise(0, 0, 4, 64, torch.arange(4))
    energy.eval()
    a = energy.loss({"x": x, "t": t, "noise": noise, "seed": 3})[0]
    b = energy.loss({"x": x, "t": t, "noise": noise, "seed": 3})[0]
    assert a.item() == b.item()  # negatives drawn without dropout: the same for the same seed
    with pytest.raises(RuntimeError, match="no proposal denoiser"):
        EnergyModel(energy.cfg).loss({"x": x, "t": t, "noise": noise})


@pytest.mark.slow  # trains three models (module fixture)
def test_fresh_energy_is_zero_and_copies_the_denoiser(runs):
    denoiser, _ = checkpoint.load_model(runs / "den")
    energy = EnergyModel.from_denoiser(denoiser)
    torch.testing.assert_close(energy.blocks[0].attn_qkv.weight, denoiser.blocks[0].attn_qkv.weight)
    x = torch.randint(0, 27, (3, 64))
    assert torch.all(energy(x, x, torch.ones(3)) == 0)


def test_hugging_face_causal_lm_as_ar_energy(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=28,
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=26,
        eos_token_id=26,
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    hf = checkpoint.load_hf_causal_lm(tmp_path)
    x0 = torch.randint(0, 27, (3, 10))
    xt = x0.clone()
    xt[:, ::2] = 27
    logits = hf(x0)
    assert logits.shape == (3, 10, 28)
    with torch.no_grad():
        ref = hf.model(
            input_ids=torch.cat([torch.full((3, 1), 26), x0[:, :-1]], 1)
        ).logits.log_softmax(-1)
    cond = ref.gather(-1, x0[..., None])[..., 0]
    lp = torch.randn(3)
    e = AREnergy(hf, 27, carry_over=True)(x0, xt, torch.ones(3), lp)
    torch.testing.assert_close(e, -(cond * (xt == 27)).sum(-1) + lp, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="Hugging Face model folder not found"):
        checkpoint.load_hf_causal_lm(tmp_path / "nope")


@pytest.mark.slow  # trains three models (module fixture)
@pytest.mark.parametrize("energy", [None, "ar", "nce"])
def test_sample_command(runs, tmp_path, capsys, energy):
    out = tmp_path / "s.jsonl"
    args = [
        "sample",
        "--denoiser",
        str(runs / "den"),
        "--steps",
        "16",
        "--num",
        "2",
        "--length",
        "48",
        "--prompt",
        "it is a truth",
        "--seed",
        "1",
        "--out",
        str(out),
    ]
    if energy:
        args += ["--energy", f"{energy}:{runs / ('ar' if energy == 'ar' else 'nce')}", "--k", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "--- stats" in printed
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["text"].startswith("it is a truth") for r in rows[:2])
    stats = rows[2]["stats"]
    assert stats["method"] == ("EDLM" if energy else "MDLM")
    assert (stats["is_steps"] > 0) == bool(energy)
    for name in ("mean_ess", "mean_sd_log_w", "mean_energy_gain"):
        assert (stats[name] is not None) == bool(energy), (name, stats)


@pytest.mark.slow  # trains three models (module fixture)
def test_sample_command_errors(runs):
    with pytest.raises(SystemExit, match="edlm sample: --denoiser .*missing: no checkpoint at"):
        main(["sample", "--denoiser", str(runs / "missing")])
    with pytest.raises(
        SystemExit,
        match="--energy must be KIND:PATH with KIND in ar, ar-carry, nce, hf, hf-carry, oracle, got .xx.",
    ):
        main(["sample", "--denoiser", str(runs / "den"), "--energy", "xx"])
    with pytest.raises(SystemExit, match="holds a 'denoiser' model, not 'ar'"):
        main(["sample", "--denoiser", str(runs / "den"), "--energy", f"ar:{runs / 'den'}"])
    with pytest.raises(SystemExit, match="holds a 'ar' model"):
        main(["sample", "--denoiser", str(runs / "ar")])
