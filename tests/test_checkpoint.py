"""Tests of edlm.checkpoint's loaders: the bundled checkpoints load as the models they claim to be,
`load_model(kind=)` refuses the wrong kind, energies load from command-line specs, and the public
MDLM checkpoint format loads from a local folder. (Saving, atomic writes and resume are in
test_train.py, where the runs that write them are.)"""

import json

import pytest
import torch
from safetensors.torch import save_file

from edlm import checkpoint
from edlm.checkpoint import CheckpointError, bundled, from_mdlm, load_energy, load_model
from edlm.config import ModelConfig


@pytest.mark.parametrize(
    "name,kind", [("denoiser-tiny", "denoiser"), ("ar-tiny", "ar"), ("energy-tiny", "energy")]
)
def test_bundled_checkpoints(name, kind):
    model, cfg = load_model(bundled(name), kind=kind)
    assert cfg.model == kind and cfg.model_config.vocab_size == 28 and not model.training
    assert cfg.model_config.mask_id == 27 and checkpoint.tokenizer_of(cfg).name == "char"


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="no bundled checkpoint 'huge'"):
        bundled("huge")


def test_load_model_refuses_the_wrong_kind():
    with pytest.raises(CheckpointError, match="holds a 'ar' model, not 'denoiser'"):
        load_model(bundled("ar-tiny"), kind="denoiser")
    with pytest.raises(ValueError, match="unknown kind 'dit'"):
        load_model(bundled("ar-tiny"), kind="dit")


def test_load_energy_specs():
    # ar: is the whole-sequence energy (the AR conditional); ar-carry: the carry-over one (Z = 1);
    # ar-full: is the old name of ar:.
    ar = load_energy(f"ar:{bundled('ar-tiny')}", mask_id=27, vocab_size=28)
    carry = load_energy(f"ar-carry:{bundled('ar-tiny')}", mask_id=27, vocab_size=28)
    old = load_energy(f"ar-full:{bundled('ar-tiny')}", mask_id=27, vocab_size=28)
    assert not ar.carry_over and not ar.self_normalized and not old.carry_over
    assert carry.carry_over and carry.self_normalized
    nce = load_energy(f"nce:{bundled('energy-tiny')}", mask_id=27, vocab_size=28)
    assert not getattr(nce, "self_normalized", False) and not nce.training
    with pytest.raises(ValueError, match="KIND:PATH"):
        load_energy("foo", mask_id=27, vocab_size=28)
    with pytest.raises(CheckpointError, match="--energy nce:.*holds a 'ar' model, not 'energy'"):
        load_energy(f"nce:{bundled('ar-tiny')}", mask_id=27, vocab_size=28)
    with pytest.raises(ValueError, match="vocabulary 28 does not match the denoiser's 50"):
        load_energy(f"ar:{bundled('ar-tiny')}", mask_id=49, vocab_size=50)


def test_bundled_names_load_where_no_such_path_exists(tmp_path, monkeypatch):
    # Every checkpoint option takes a bundled name (ar:ar-tiny, --denoiser denoiser-tiny); a real
    # path of that name wins, and a name that is neither says which names are bundled.
    monkeypatch.chdir(tmp_path)
    ar = load_energy("ar:ar-tiny", mask_id=27, vocab_size=28)
    want = load_energy(f"ar:{bundled('ar-tiny')}", mask_id=27, vocab_size=28)
    x = torch.randint(0, 27, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        ar.log_p_ar(x, torch.full_like(x, 27)), want.log_p_ar(x, torch.full_like(x, 27))
    )
    assert load_model("denoiser-tiny", kind="denoiser")[1].model_config.length == 256
    with pytest.raises(CheckpointError, match="no checkpoint at ar-tiniest.*bundled names: "):
        load_energy("ar:ar-tiniest", mask_id=27, vocab_size=28)
    local = tmp_path / "ar-tiny"
    local.mkdir()
    with pytest.raises(CheckpointError, match="ar-tiny: expected a checkpoint directory"):
        load_model("ar-tiny", kind="ar")


def test_corrupt_checkpoints_are_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.json", "meta.json", "model.safetensors"):
        (bad / f).write_bytes((bundled("ar-tiny") / f).read_bytes())
    (bad / "meta.json").write_text("{}")
    with pytest.raises(CheckpointError, match="invalid meta.json"):
        load_model(bad)
    (bad / "meta.json").write_text('{"step": 1}')
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_model(bad)


def mdlm_state_dict(cfg: ModelConfig):
    """A state dict with the public MDLM (Hugging Face mdlm-owt) key names and shapes."""
    D, C, V, F = cfg.dim, cfg.cond_dim, cfg.vocab_size, cfg.mlp_ratio * cfg.dim
    s = {
        "backbone.vocab_embed.embedding": (V, D),
        "backbone.sigma_map.mlp.0.weight": (C, 256),
        "backbone.sigma_map.mlp.0.bias": (C,),
        "backbone.sigma_map.mlp.2.weight": (C, C),
        "backbone.sigma_map.mlp.2.bias": (C,),
        "backbone.rotary_emb.inv_freq": (D // cfg.n_heads // 2,),
        "backbone.output_layer.norm_final.weight": (D,),
        "backbone.output_layer.linear.weight": (V, D),
        "backbone.output_layer.linear.bias": (V,),
        "backbone.output_layer.adaLN_modulation.weight": (2 * D, C),
        "backbone.output_layer.adaLN_modulation.bias": (2 * D,),
    }
    for i in range(cfg.n_layers):
        b = f"backbone.blocks.{i}."
        s.update(
            {
                b + "norm1.weight": (D,),
                b + "attn_qkv.weight": (3 * D, D),
                b + "attn_out.weight": (D, D),
                b + "norm2.weight": (D,),
                b + "mlp.0.weight": (F, D),
                b + "mlp.0.bias": (F,),
                b + "mlp.2.weight": (D, F),
                b + "mlp.2.bias": (D,),
                b + "adaLN_modulation.weight": (6 * D, C),
                b + "adaLN_modulation.bias": (6 * D,),
            }
        )
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) * 0.1 for k, shape in s.items()}


def test_loads_public_mdlm_checkpoint_format(tmp_path):
    cfg = ModelConfig(vocab_size=50, length=16, dim=48, n_heads=3, n_layers=2, cond_dim=24)
    state = mdlm_state_dict(cfg)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mdlm",
                "vocab_size": 50,
                "model_length": 16,
                "hidden_dim": 48,
                "cond_dim": 24,
                "n_blocks": 2,
                "n_heads": 3,
                "dropout": 0.1,
                "time_conditioning": False,
            }
        )
    )
    model = from_mdlm(tmp_path)
    assert model.cfg.n_layers == 2 and model.cfg.dim == 48 and model.cfg.vocab_size == 50
    torch.testing.assert_close(
        model.blocks[1].attn_qkv.weight, state["backbone.blocks.1.attn_qkv.weight"]
    )
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
