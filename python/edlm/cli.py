"""The `edlm` command line: train (and, as they land, sample, eval, demo).

`edlm train --model denoiser --preset tiny --data austen-char --steps=2000 --model.dim=256`:
any TrainConfig field (or model.<field>) can be set as --key=value; unknown keys are errors.
"""

from __future__ import annotations

import argparse
import sys

from . import config as config_mod


def _overrides(rest: list[str], command: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or arg == "--":
            raise SystemExit(f"edlm {command}: unexpected argument {arg!r} (settings are --key=value)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise SystemExit(f"edlm {command}: --{key} needs a value (--{key}=VALUE)")
            value = rest[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def cmd_train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="edlm train",
        description="Train a denoiser, an AR model or (EDLM) an energy model. Any other "
        "TrainConfig field is accepted as --key=value, model fields as --model.<field>=value.",
    )
    p.add_argument("--model", default="denoiser", help="denoiser | ar (default: denoiser)")
    p.add_argument("--preset", default="tiny", help="model preset: " + ", ".join(sorted(config_mod.PRESETS)))
    p.add_argument("--data", default="austen-char", help="dataset name or path (default: austen-char)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<model>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, rest = p.parse_known_args(argv)
    from .models import build  # noqa: F401  (fail early on a broken install)

    try:
        cfg = config_mod.TrainConfig(model=args.model, preset=args.preset, data=args.data)
        cfg.model_config = config_mod.preset(args.preset)
        cfg.out = args.out or f"runs/{args.model}-{args.preset}"
        config_mod.apply_overrides(cfg, _overrides(rest, "train"))
        if cfg.model not in ("denoiser", "ar"):
            raise ValueError(f"--model must be denoiser or ar, got {cfg.model!r}")
    except ValueError as e:
        raise SystemExit(f"edlm train: {e}") from None
    from .train import train

    metrics = train(cfg, resume=args.resume, progress=not args.no_progress)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


COMMANDS = {"train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: edlm {" + ",".join(COMMANDS) + "} ...\n\n" + __doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"edlm: unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
