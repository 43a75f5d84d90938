"""Configuration as dataclasses: model presets by name, training settings, and `--key=value`
overrides mapped onto fields with type checks. The resolved config is saved in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass

import torch


class ConfigError(ValueError):
    """A setting is invalid, or conflicts with the data or a checkpoint; the message names it."""


@dataclass
class ModelConfig:
    # vocab_size, length and mask_id come from the data (its token file's header) when left at
    # 0 / 0 / -1, which is how the presets leave them; a value set by hand must agree with it.
    vocab_size: int = 0  # including the mask token
    length: int = 0  # tokens per sequence (the block size)
    mask_id: int = -1  # -1: the last id; a Hugging Face tokenizer's own mask token keeps its id
    tokenizer: str = ""  # what `load_tokenizer` takes to decode this model's ids ("" unknown)
    dim: int = 128
    n_heads: int = 4
    n_layers: int = 4
    cond_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False  # off by default, as in MDLM

    def __post_init__(self):
        if self.mask_id < 0 and self.vocab_size > 0:
            self.mask_id = self.vocab_size - 1

    def check(self, what: str = "model") -> None:
        """Raises ConfigError naming the first field that no model can be built with."""
        positive = ("vocab_size", "length", "dim", "n_heads", "n_layers", "cond_dim", "mlp_ratio")
        for name in positive:
            if getattr(self, name) < 1:
                hint = (
                    " (it comes from the data when trained)"
                    if name in ("vocab_size", "length")
                    else ""
                )
                raise ConfigError(f"{what}.{name} must be >= 1, got {getattr(self, name)}{hint}")
        if self.vocab_size < 2:
            raise ConfigError(
                f"{what}.vocab_size must be >= 2 (a token and the mask), got {self.vocab_size}"
            )
        if not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(
                f"{what}.mask_id must be in [0, {self.vocab_size}), got {self.mask_id}"
            )
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ConfigError(
                f"{what}.dim ({self.dim}) must be a multiple of 2 * {what}.n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{what}.dropout must be in [0, 1), got {self.dropout}")


# Architectures by name; the vocabulary and length come from the data.
PRESETS = {
    # Trains on a laptop CPU in minutes on the Austen characters.
    "tiny": ModelConfig(),
    # MDLM's small model: 12 layers x 768 x 12 heads (GPT-2 BPE plus the mask, L = 1024, in MDLM).
    "small": ModelConfig(dim=768, n_heads=12, n_layers=12, cond_dim=128, dropout=0.1),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
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
    valid_fraction: float = 0.05  # held out of `data` for validation when valid_data is not given
    model_config: ModelConfig | None = None  # None: the preset's

    def __post_init__(self):
        if self.model_config is None:
            self.model_config = preset(self.preset)

    def check(self) -> None:
        """Raises ConfigError naming the first setting a run cannot start with (the model's
        architecture included; its vocabulary and length are checked once the data is known)."""
        if self.model not in MODEL_KINDS:
            raise ConfigError(f"model must be one of {', '.join(MODEL_KINDS)}, got {self.model!r}")
        at_least = {
            "steps": 1,
            "batch_size": 1,
            "micro_batch_size": 0,
            "warmup_steps": 0,
            "eval_every": 1,
            "eval_batches": 1,
            "save_every": 1,
            "log_every": 1,
            "block_size": 0,
            "num_negatives": 1,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be in [0, lr = {self.lr}], got {self.min_lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.valid_fraction < 1:
            raise ConfigError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.model == "energy" and not self.init_from:
            raise ConfigError("model=energy needs init_from: the checkpoint of a trained denoiser")
        resolve_device(self.device)
        mc = dataclasses.replace(self.model_config, vocab_size=2, length=1, mask_id=0)
        mc.check("model")  # the architecture alone; the data's fields are checked in train()


MODEL_KINDS = ("denoiser", "ar", "energy")


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`, checked against this
    torch build and machine; ConfigError says what is wrong."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device {name!r} is not supported: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = (
            "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device is visible"
        )
        raise ConfigError(f"device {name!r} is not available: {build} (torch {torch.__version__})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} is not available: {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict):
    """Rebuilds a (nested) config dataclass from `to_dict` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config keys for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        hint = _dataclass_of(hints[name])
        if dataclasses.is_dataclass(hint) and value is not None:
            value = from_dict(hint, value)
        elif hint is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_of(hint):
    """The dataclass in a hint like `ModelConfig | None`, else the hint itself."""
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return hint


def _parse(name: str, hint, text: str):
    if hint is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key {name!r} expects a boolean, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config key {name!r} expects an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config key {name!r} expects a number, got {text!r}") from None
    if hint is tuple:
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(
                f"config key {name!r} expects comma-separated numbers, got {text!r}"
            ) from None
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
            if not dataclasses.is_dataclass(target) or part not in {
                f.name for f in dataclasses.fields(target)
            }:
                raise ConfigError(f"unknown config key {key!r}")
            target = getattr(target, part)
        fields = {f.name for f in dataclasses.fields(target)}
        if path[-1] not in fields:
            raise ConfigError(
                f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}"
            )
        hint = _dataclass_of(typing.get_type_hints(type(target))[path[-1]])
        if dataclasses.is_dataclass(hint):
            raise ConfigError(f"config key {key!r} is a group; set one of its fields instead")
        setattr(target, path[-1], _parse(key, hint, text))
    return cfg


def dumps(cfg) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
