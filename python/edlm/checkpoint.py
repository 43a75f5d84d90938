"""Checkpoints and every other way a model is loaded: weights in safetensors (they cannot run code
when loaded), the resolved config in JSON, optimizer and loop state through
torch.load(weights_only=True). Written atomically: a checkpoint directory is complete before
`latest` names it, so a kill mid-write loses nothing. Also: the bundled checkpoints, energies from
a command-line spec, local Hugging Face causal LMs, the public MDLM format, and the fp16 export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import config as config_mod
from .config import ModelConfig
from .corpora import austen_oracle, dataset_tokenizer
from .models import KINDS, AREnergy, Denoiser, HFCausalLM, build
from .oracle import MarkovSource, SourceEnergy
from .tokenizer import CharTokenizer, load_tokenizer

LATEST = "latest"
KEEP = 2  # complete checkpoints kept in a run directory


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replaces `path` with `text` all at once (temp file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save(
    run_dir,
    step: int,
    *,
    model_state: dict,
    cfg,
    ema_state: dict | None = None,
    train_state: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Writes run_dir/step-NNNNNNN/ and points run_dir/latest at it; keeps the last KEEP."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{final.name}."))
    try:
        contiguous = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(contiguous, tmp / "model.safetensors", metadata={"step": str(step)})
        if ema_state is not None:
            ema = {k: v.detach().contiguous().cpu() for k, v in ema_state.items()}
            save_file(ema, tmp / "ema.safetensors", metadata={"step": str(step)})
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        (tmp / "config.json").write_text(config_mod.dumps(cfg))
        (tmp / "meta.json").write_text(
            json.dumps({"step": step, "metrics": metrics or {}}, indent=2)
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(
            tmp, 0o777 & ~umask
        )  # mkdtemp makes it private; a checkpoint is an ordinary folder
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(run_dir / LATEST, final.name + "\n")
    steps = sorted(p for p in run_dir.glob("step-*") if p.is_dir())
    for old in steps[:-KEEP]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path) -> Path:
    """A checkpoint directory from itself, from a run directory (through `latest`), or from the
    name of a bundled checkpoint (`ar-tiny`, ...) where no such path exists."""
    path = Path(path).expanduser()
    if not path.exists() and str(path) in BUNDLED:
        path = bundled(str(path))
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: the path does not exist (bundled names: "
            f"{', '.join(BUNDLED)})"
        )
    if (path / LATEST).is_file():
        name = (path / LATEST).read_text().strip()
        target = path / name
        if not (target / "config.json").is_file():
            raise CheckpointError(f"{path}/latest names {name!r}, which is missing or incomplete")
        return target
    if (path / "config.json").is_file():
        return path
    raise CheckpointError(
        f"no checkpoint at {path}: expected a checkpoint directory (with config.json and "
        f"model.safetensors) or a run directory with a `latest` file"
    )


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / LATEST).is_file()


def _load_weights(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"checkpoint file missing: {file}")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {file} is corrupt or unreadable: {e}") from e


def load(path, *, train_state: bool = False) -> dict:
    """Reads a checkpoint: {'dir', 'config' (TrainConfig), 'model', 'ema' (or None), 'step',
    'metrics', 'train_state' (only when asked)}."""
    ckpt = resolve(path)
    try:
        cfg_dict = json.loads((ckpt / "config.json").read_text())
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt} has an unreadable config.json or meta.json: {e}"
        ) from e
    try:
        cfg = config_mod.from_dict(config_mod.TrainConfig, cfg_dict)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an invalid config: {e}") from e
    try:
        step = int(meta["step"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an invalid meta.json (no step): {e!r}") from e
    out = {
        "dir": ckpt,
        "config": cfg,
        "model": _load_weights(ckpt / "model.safetensors"),
        "ema": _load_weights(ckpt / "ema.safetensors")
        if (ckpt / "ema.safetensors").exists()
        else None,
        "step": step,
        "metrics": meta.get("metrics", {}),
    }
    if train_state:
        file = ckpt / "train_state.pt"
        if not file.is_file():
            raise CheckpointError(f"checkpoint {ckpt} has no train_state.pt to resume from")
        try:
            out["train_state"] = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors have many types; all mean the same here
            raise CheckpointError(f"checkpoint file {file} is corrupt or unsafe: {e}") from e
    return out


def load_model(path, device="cpu", *, kind: str | None = None, use_ema: bool = True):
    """(model, TrainConfig) saved in a checkpoint (EMA weights when present), in eval mode.

    kind: "denoiser" | "ar" | "energy" to insist on one (CheckpointError names what it holds)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"load_model: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    ckpt = load(path)
    cfg = ckpt["config"]
    if kind is not None and cfg.model != kind:
        raise CheckpointError(f"{path} holds a {cfg.model!r} model, not {kind!r}")
    try:
        model = build(cfg.model, cfg.model_config)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {ckpt['dir']} has an invalid model config: {e}") from e
    state = ckpt["ema"] if use_ema and ckpt["ema"] is not None else ckpt["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt['dir']} does not fit a {cfg.model} model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as e:  # torch raises both for an unusable device
        raise ValueError(f"load_model: cannot move the model to {device}: {e}") from None
    return model.eval(), cfg


def tokenizer_of(cfg):
    """The tokenizer that decodes a checkpoint's ids: the one recorded from its data's header,
    else (checkpoints saved before it was recorded) the named dataset's or the config's."""
    name = cfg.model_config.tokenizer or dataset_tokenizer(cfg.data) or cfg.tokenizer
    return load_tokenizer(name)


# --- checkpoints shipped in the package ---------------------------------------------------------

BUNDLED = (
    "denoiser-tiny",
    "ar-tiny",
    "energy-tiny",
    "denoiser-oracle",
    "ar-oracle",
    "energy-oracle",
)


def bundled(name: str) -> Path:
    """The folder of a checkpoint shipped in the package: denoiser-tiny, ar-tiny, energy-tiny
    (Austen's novels, characters) and denoiser-oracle, ar-oracle, energy-oracle (samples of the
    austen-oracle Markov source)."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled checkpoint {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("edlm") / "checkpoints" / name))


def export_fp16(run, dest) -> dict:
    """Writes a run's EMA weights (else its weights) as fp16 into `dest`, with its config (less
    the training machine's paths) and step: the compact form of the bundled checkpoints. The
    metrics leave out the throughput, which depends on the machine, so that retraining on the
    same torch build rewrites every file byte for byte. Returns {"step", "dir"}."""
    ck = load(run)
    state = ck["ema"] if ck["ema"] is not None else ck["model"]
    cfg = ck["config"]
    cfg.out, cfg.init_from = "", ""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.to(torch.float16) for k, v in state.items()},
        dest / "model.safetensors",
        metadata={"step": str(ck["step"]), "weights": "EMA, fp16"},
    )
    (dest / "config.json").write_text(config_mod.dumps(cfg))
    metrics = {k: v for k, v in ck["metrics"].items() if k != "tokens_per_s"}
    meta = {"step": ck["step"], "metrics": metrics}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"step": ck["step"], "dir": dest}


# --- energies and outside models ----------------------------------------------------------------

ENERGY_KINDS = ("ar", "ar-carry", "nce", "hf", "hf-carry", "oracle")
ALIASES = {"ar-full": "ar", "hf-full": "hf"}  # the whole-sequence specs' names before issue 11


def load_energy(spec: str, *, mask_id: int, vocab_size: int, device="cpu"):
    """An energy from a command-line spec: `ar:CKPT` (our AR model, whole sequence: the target is
    the AR conditional), `ar-carry:CKPT` (carry-over: Z = 1, the target is not the AR
    conditional; see `AREnergy`), `nce:CKPT` (a trained NCE energy), `hf:PATH` / `hf-carry:PATH`
    (a local Hugging Face causal LM with the same tokenizer, whole sequence or carry-over),
    `oracle:` (the austen-oracle Markov source itself, `SourceEnergy`: a perfect energy for the
    oracle suite; `oracle:PATH` a source saved with `MarkovSource.save`).
    `ar-full:` and `hf-full:` are accepted as the old names of `ar:` and `hf:`."""
    kind, sep, path = str(spec).partition(":")
    kind = ALIASES.get(kind, kind)
    if kind == "oracle" and sep:
        if vocab_size != CharTokenizer.vocab_size or mask_id != CharTokenizer.mask_id:
            raise ValueError(
                f"--energy {spec}: the oracle source is over the 27 text8 characters (char "
                f"tokenizer, vocabulary 28, mask 27), not a vocabulary of {vocab_size}"
            )
        source = MarkovSource.load(Path(path).expanduser()) if path else austen_oracle()
        return SourceEnergy(source)
    if not sep or kind not in ENERGY_KINDS or not path:
        raise ValueError(
            f"--energy must be KIND:PATH with KIND in {', '.join(ENERGY_KINDS)}, got {spec!r}"
        )
    carry_over = kind.endswith("-carry")
    if kind.startswith("hf"):
        return AREnergy(load_hf_causal_lm(path, device), mask_id, carry_over=carry_over)
    expected = "ar" if kind.startswith("ar") else "energy"
    try:
        model, cfg = load_model(path, device, kind=expected)
    except CheckpointError as e:
        raise CheckpointError(f"--energy {spec}: {e}") from None
    if cfg.model_config.vocab_size != vocab_size:
        raise ValueError(
            f"--energy {spec}: vocabulary {cfg.model_config.vocab_size} does not match the "
            f"denoiser's {vocab_size}"
        )
    return AREnergy(model, mask_id, carry_over=carry_over) if expected == "ar" else model


def load_hf_causal_lm(path, device="cpu", dtype=None) -> HFCausalLM:
    """A Hugging Face causal LM from a local folder (never downloaded), as an HFCausalLM."""
    try:
        from transformers import AutoModelForCausalLM  # optional dependency
    except ImportError:
        raise ImportError(
            "an hf: energy needs the `transformers` package: pip install transformers"
        ) from None
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"Hugging Face model folder not found: {folder}")
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, torch_dtype=dtype
    )
    hf = model.config
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id
    if bos is None:
        raise ValueError(f"{folder}: the model config has neither bos_token_id nor eos_token_id")
    return HFCausalLM(model.to(device).eval(), int(bos))


def from_mdlm(path, device="cpu") -> Denoiser:
    """Loads the public MDLM checkpoint format (Hugging Face `kuleshov-group/mdlm-owt`: a folder
    with config.json and model.safetensors or pytorch_model.bin, keys `backbone.<dit name>`) from
    a local path into a Denoiser. Nothing is downloaded."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"MDLM checkpoint folder not found: {folder}")
    hf = (
        json.loads((folder / "config.json").read_text())
        if (folder / "config.json").is_file()
        else {}
    )
    if (folder / "model.safetensors").is_file():
        state = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    state.pop("rotary_emb.inv_freq", None)  # recomputed, never learned
    emb = state.get("vocab_embed.embedding")
    if emb is None:
        raise ValueError(f"{folder} is not an MDLM DiT checkpoint: no vocab_embed.embedding")
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    cfg = ModelConfig(
        vocab_size=emb.shape[0],
        length=int(hf.get("model_length", 1024)),
        dim=emb.shape[1],
        n_heads=int(hf.get("n_heads", 12)),
        n_layers=n_layers,
        cond_dim=state["sigma_map.mlp.2.weight"].shape[0],
        mlp_ratio=state["blocks.0.mlp.0.weight"].shape[0] // emb.shape[1],
        dropout=float(hf.get("dropout", 0.1)),
        time_conditioning=bool(hf.get("time_conditioning", False)),
    )
    model = Denoiser(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder} does not match MDLM's DiT layout: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()
