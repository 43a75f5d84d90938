"""Exports trained runs as the compact checkpoints bundled with the package: the EMA weights in
fp16 (model.safetensors), the resolved config and the training step, no optimizer state.

`make checkpoints` trains the three runs and calls this:
python scripts/export_checkpoints.py runs/bundled/denoiser:denoiser-tiny runs/bundled/ar:ar-tiny \
    runs/bundled/energy:energy-tiny
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from edlm import checkpoint
from edlm.config import dumps

OUT = Path(__file__).resolve().parents[1] / "python" / "edlm" / "checkpoints"


def export(run: str, name: str) -> None:
    ck = checkpoint.load(run)
    state = ck["ema"] if ck["ema"] is not None else ck["model"]
    cfg = ck["config"]
    cfg.out, cfg.init_from = "", ""  # local paths of the training machine
    dest = OUT / name
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16) for k, v in state.items()}, dest / "model.safetensors",
              metadata={"step": str(ck["step"]), "weights": "EMA, fp16"})
    (dest / "config.json").write_text(dumps(cfg))
    # the training metrics, less the throughput, which depends on the machine: with it left out,
    # a repeat of `make checkpoints` rewrites every file byte for byte
    metrics = {k: v for k, v in ck["metrics"].items() if k != "tokens_per_s"}
    (dest / "meta.json").write_text(json.dumps({"step": ck["step"], "metrics": metrics}, indent=2) + "\n")
    print(f"{run} -> {dest} (step {ck['step']})")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        run, _, name = arg.partition(":")
        export(run, name)
