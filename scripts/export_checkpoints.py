"""Exports trained runs as the compact checkpoints bundled with the package: the EMA weights in
fp16 (model.safetensors), the resolved config and the training step, no optimizer state
(`edlm.checkpoint.export_fp16`).

`make checkpoints` trains the three runs and calls this:
python scripts/export_checkpoints.py runs/bundled/denoiser:denoiser-tiny runs/bundled/ar:ar-tiny \
    runs/bundled/energy:energy-tiny
"""

import sys
from pathlib import Path

from edlm.checkpoint import export_fp16

OUT = Path(__file__).resolve().parents[1] / "python" / "edlm" / "checkpoints"

if __name__ == "__main__":
    for arg in sys.argv[1:]:
        run, _, name = arg.partition(":")
        done = export_fp16(run, OUT / name)
        print(f"{run} -> {done['dir']} (step {done['step']})")
