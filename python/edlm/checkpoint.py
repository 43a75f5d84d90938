"""Checkpoints: weights in safetensors (they cannot run code when loaded), the resolved config in
JSON, optimizer and loop state through torch.load(weights_only=True). Written atomically: a
checkpoint directory is complete before `latest` names it, so a kill mid-write loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import config as config_mod

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


def save(run_dir, step: int, *, model_state: dict, cfg, ema_state: dict | None = None,
         train_state: dict | None = None, metrics: dict | None = None) -> Path:
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
        (tmp / "meta.json").write_text(json.dumps({"step": step, "metrics": metrics or {}}, indent=2))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
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
    """A checkpoint directory from itself or from a run directory (through `latest`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
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
        raise CheckpointError(f"checkpoint {ckpt} has an unreadable config.json or meta.json: {e}") from e
    try:
        cfg = config_mod.from_dict(config_mod.TrainConfig, cfg_dict)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an invalid config: {e}") from e
    out = {
        "dir": ckpt,
        "config": cfg,
        "model": _load_weights(ckpt / "model.safetensors"),
        "ema": _load_weights(ckpt / "ema.safetensors") if (ckpt / "ema.safetensors").exists() else None,
        "step": int(meta["step"]),
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


def load_model(path, device="cpu", *, use_ema: bool = True):
    """The model saved in a checkpoint (EMA weights when present), in eval mode."""
    from .models import build

    ckpt = load(path)
    cfg = ckpt["config"]
    model = build(cfg.model, cfg.model_config)
    state = ckpt["ema"] if use_ema and ckpt["ema"] is not None else ckpt["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt['dir']} does not fit a {cfg.model} model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), cfg
