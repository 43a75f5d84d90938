"""The `edlm` command line: train, sample, eval, demo.

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
    p.add_argument("--model", default="denoiser", help="denoiser | ar | energy (default: denoiser)")
    p.add_argument("--init-from", dest="init_from", default="", help="energy: the trained denoiser's checkpoint")
    p.add_argument("--preset", default="tiny", help="model preset: " + ", ".join(sorted(config_mod.PRESETS)))
    p.add_argument("--data", default="austen-char", help="dataset name or path (default: austen-char)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<model>-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, rest = p.parse_known_args(argv)
    from .models import build  # noqa: F401  (fail early on a broken install)

    try:
        cfg = config_mod.TrainConfig(model=args.model, preset=args.preset, data=args.data, init_from=args.init_from)
        cfg.model_config = config_mod.preset(args.preset)
        cfg.out = args.out or f"runs/{args.model}-{args.preset}"
        config_mod.apply_overrides(cfg, _overrides(rest, "train"))
        if cfg.model not in ("denoiser", "ar", "energy"):
            raise ValueError(f"--model must be denoiser, ar or energy, got {cfg.model!r}")
    except ValueError as e:
        raise SystemExit(f"edlm train: {e}") from None
    from .train import train

    metrics = train(cfg, resume=args.resume, progress=not args.no_progress)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


def tokenizer_of(cfg):
    from .data import NAMED_DATASETS
    from .tokenizer import load_tokenizer

    name = NAMED_DATASETS[cfg.data][1] if cfg.data in NAMED_DATASETS else cfg.tokenizer
    return load_tokenizer(name)


def cmd_sample(argv: list[str]) -> int:
    import json
    import time

    import torch

    p = argparse.ArgumentParser(prog="edlm sample", description="Generate text with MDLM or EDLM.")
    p.add_argument("--denoiser", default=None, help="denoiser checkpoint (default: the bundled denoiser-tiny)")
    p.add_argument("--energy", default=None, help="ar:CKPT | ar-full:CKPT | nce:CKPT | hf:PATH | hf-full:PATH (default: none, plain MDLM)")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--k", type=int, default=4, help="importance-sampling candidates (with --energy)")
    p.add_argument("--window", type=float, default=1.0, help="IS at the steps with t > 1 - window")
    p.add_argument("--is-temperature", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--length", type=int, default=0, help="tokens per sample (default: the model's)")
    p.add_argument("--prompt", default="", help="text the samples start with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write samples and stats as JSONL")
    args = p.parse_args(argv)
    from . import checkpoint
    from .models.energy import load_energy

    if args.denoiser is None:
        from .demo import bundled

        args.denoiser = str(bundled("denoiser-tiny"))
    try:
        denoiser, cfg = checkpoint.load_model(args.denoiser, args.device)
        if cfg.model != "denoiser":
            raise ValueError(f"--denoiser {args.denoiser}: the checkpoint holds a {cfg.model!r} model")
        mask_id, vocab = denoiser.mask_id, cfg.model_config.vocab_size
        energy = load_energy(args.energy, mask_id=mask_id, vocab_size=vocab, device=args.device) if args.energy else None
        tok = tokenizer_of(cfg)
        length = args.length or cfg.model_config.length
        prompt = None
        if args.prompt:
            ids = tok.encode(args.prompt)
            if len(ids) >= length:
                raise ValueError(f"--prompt is {len(ids)} tokens, not shorter than --length {length}")
            prompt = torch.full((args.num, length), mask_id, dtype=torch.long)
            prompt[:, : len(ids)] = torch.tensor(ids)
    except (ValueError, FileNotFoundError, ImportError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"edlm sample: {e}") from None
    from .sampling import sample

    g = torch.Generator(device=args.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    try:
        x, stats = sample(
            denoiser, batch_size=args.num, length=length, mask_id=mask_id, steps=args.steps,
            energy=energy, num_candidates=args.k if energy else 1, window=args.window,
            is_temperature=args.is_temperature, temperature=args.temperature, prompt=prompt,
            generator=g, return_stats=True, device=args.device,
        )
    except ValueError as e:
        raise SystemExit(f"edlm sample: {e}") from None
    seconds = time.perf_counter() - t0
    texts = [tok.decode(row.tolist()) for row in x]
    ess = stats["ess"]
    summary = {
        "method": "EDLM" if energy else "MDLM", "steps": args.steps, "k": args.k if energy else 1,
        "window": args.window, "network_calls": stats["network_calls"], "is_steps": stats["is_steps"],
        "mean_ess": round(float(ess.float().mean()), 3) if ess.numel() else None,
        "seconds_per_sample": round(seconds / args.num, 4),
        "tokens_per_second": round(args.num * length / seconds, 1),
    }
    for i, text in enumerate(texts):
        print(f"--- sample {i}\n{text}")
    print("--- stats " + json.dumps(summary))
    if args.out:
        with open(args.out, "w") as f:
            for i, (text, row) in enumerate(zip(texts, x.tolist())):
                f.write(json.dumps({"index": i, "seed": args.seed, "text": text, "tokens": row}) + "\n")
            f.write(json.dumps({"stats": summary}) + "\n")
    return 0


def cmd_eval(argv: list[str]) -> int:
    from .eval_cli import cmd_eval as run

    return run(argv)


def cmd_demo(argv: list[str]) -> int:
    from .demo import cmd_demo as run

    return run(argv)


def cmd_sweep(argv: list[str]) -> int:
    from .sweep import cmd_sweep as run

    return run(argv)


COMMANDS = {
    "train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "demo": cmd_demo, "sweep": cmd_sweep,
}


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
