"""Configuration as dataclasses: model presets by name, training settings, and `--key=value`
overrides mapped onto fields with type checks. The resolved config is saved in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    vocab_size: int = 28  # including the mask token, which is the last id
    length: int = 256
    dim: int = 128
    n_heads: int = 4
    n_layers: int = 4
    cond_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False  # off by default, as in MDLM

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1


PRESETS = {
    # Trains on a laptop CPU in minutes on the Austen characters.
    "tiny": ModelConfig(),
    # MDLM's small model: 12 layers x 768 x 12 heads, GPT-2 BPE plus the mask, L = 1024.
    "small": ModelConfig(
        vocab_size=50258, length=1024, dim=768, n_heads=12, n_layers=12, cond_dim=128, dropout=0.1
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name])


@dataclass
class TrainConfig:
    model: str = "denoiser"  # denoiser | ar | energy
    preset: str = "tiny"
    data: str = "austen-char"
    valid_data: str = ""  # default: the validation split of `data` (required for a path)
    tokenizer: str = "char"  # for raw text paths: char | gpt2 | a Hugging Face tokenizer path
    block_size: int = 0  # sequence length; 0: the dataset's (256 characters, 1024 BPE tokens)
    out: str = "runs/tiny"
    steps: int = 2000
    batch_size: int = 32  # global batch, summed over data-parallel ranks and accumulation
    micro_batch_size: int = 0  # per rank and forward pass; 0: batch_size / world size
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # constant | cosine
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 disables the EMA
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    init_from: str = ""  # a checkpoint to start from (the energy model's denoiser)
    num_negatives: int = 1  # NCE: proposal samples per real sequence
    model_config: ModelConfig = field(default_factory=ModelConfig)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict):
    """Rebuilds a (nested) config dataclass from `to_dict` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown config keys for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif hint is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _parse(name: str, hint, text: str):
    if hint is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key {name!r} expects a boolean, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"config key {name!r} expects an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config key {name!r} expects a number, got {text!r}") from None
    if hint is tuple:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"config key {name!r} expects comma-separated numbers, got {text!r}") from None
    return text


def apply_overrides(cfg, overrides: dict[str, str]):
    """Sets `key=value` pairs on a config dataclass; `model_config.dim=256` reaches nested fields
    (`model.dim` is accepted as a short form). Unknown keys and bad values are errors."""
    for key, text in overrides.items():
        path = key.replace("-", "_").split(".")
        if path[0] == "model" and len(path) > 1:
            path[0] = "model_config"
        target = cfg
        for part in path[:-1]:
            if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
                raise ValueError(f"unknown config key {key!r}")
            target = getattr(target, part)
        fields = {f.name for f in dataclasses.fields(target)}
        if path[-1] not in fields:
            raise ValueError(
                f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}"
            )
        hint = typing.get_type_hints(type(target))[path[-1]]
        if dataclasses.is_dataclass(hint):
            raise ValueError(f"config key {key!r} is a group; set one of its fields instead")
        setattr(target, path[-1], _parse(key, hint, text))
    return cfg


def dumps(cfg) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
