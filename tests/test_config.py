"""Tests of edlm.config: overrides are type-checked, the training settings and the device are
checked with errors that name the setting, and configs round-trip through JSON (old checkpoints'
configs, without the data fields, included)."""

import json

import pytest
import torch

from edlm.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    dumps,
    from_dict,
    preset,
    resolve_device,
)


def test_overrides_are_type_checked():
    cfg = TrainConfig()
    apply_overrides(
        cfg, {"steps": "10", "lr": "1e-3", "model.dim": "64", "model.time_conditioning": "true"}
    )
    assert (
        cfg.steps == 10
        and cfg.lr == 1e-3
        and cfg.model_config.dim == 64
        and cfg.model_config.time_conditioning
    )
    with pytest.raises(ValueError, match="unknown config key 'stepz'"):
        apply_overrides(cfg, {"stepz": "3"})
    with pytest.raises(ValueError, match="config key 'steps' expects an integer, got 'ten'"):
        apply_overrides(cfg, {"steps": "ten"})
    with pytest.raises(ValueError, match="unknown config key 'model.width'"):
        apply_overrides(cfg, {"model.width": "3"})
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")


def test_train_config_builds_its_own_preset():
    assert TrainConfig(preset="small").model_config.dim == 768
    assert TrainConfig().model_config == preset("tiny")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("steps", "-3", "steps must be >= 1, got -3"),
        ("batch_size", "0", "batch_size must be >= 1, got 0"),
        ("lr", "0", "lr must be > 0, got 0.0"),
        ("ema", "1.5", r"ema must be in \[0, 1\), got 1.5"),
        ("lr_schedule", "linear", "lr_schedule must be constant or cosine, got 'linear'"),
        ("model", "gpt", "model must be one of denoiser, ar, energy, got 'gpt'"),
        ("model.dim", "-8", "model.dim must be >= 1, got -8"),
        ("device", "mps", "device 'mps' is not supported"),
        ("device", "banana", "unknown device 'banana'"),
        ("valid_fraction", "1", r"valid_fraction must be in \(0, 1\)"),
    ],
)
def test_check_names_the_bad_setting(key, value, message):
    cfg = apply_overrides(TrainConfig(), {key: value})
    with pytest.raises(ConfigError, match=message):
        cfg.check()


def test_energy_needs_init_from():
    with pytest.raises(ConfigError, match="model=energy needs init_from"):
        TrainConfig(model="energy").check()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' is not available"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="device 'cuda:1' is not available"):
            resolve_device("cuda:1")


def test_round_trip_and_old_configs():
    cfg = TrainConfig(
        model_config=ModelConfig(vocab_size=30, length=8, mask_id=3, tokenizer="bert")
    )
    again = from_dict(TrainConfig, json.loads(dumps(cfg)))
    assert again == cfg and again.model_config.mask_id == 3
    old = json.loads(dumps(TrainConfig(model_config=ModelConfig(vocab_size=28, length=256))))
    for key in ("mask_id", "tokenizer"):  # saved before these were recorded
        del old["model_config"][key]
    del old["valid_fraction"]
    mc = from_dict(TrainConfig, old).model_config
    assert (mc.vocab_size, mc.mask_id, mc.tokenizer) == (28, 27, "")
    with pytest.raises(ConfigError, match="unknown config keys for TrainConfig: bogus"):
        from_dict(TrainConfig, {**old, "bogus": 1})
