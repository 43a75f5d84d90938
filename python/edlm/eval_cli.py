"""`edlm eval`: likelihood bounds of a trained denoiser on a dataset, MDLM's NELBO and, with an
energy, EDLM's (log Z by T_n and U_n; EDLM.md section 4), printed as a small table.

`edlm eval --denoiser runs/denoiser-tiny --data austen-char --energy ar:runs/ar-tiny --num-is 16`
"""

from __future__ import annotations

import argparse
import json

DEFAULT_SPLIT = {"austen": "valid", "kjv": "test"}


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load(path: str, kind: str, device):
    from .checkpoint import load_model

    model, cfg = load_model(path, device)
    if cfg.model != kind:
        raise SystemExit(f"edlm eval: {path} holds a {cfg.model!r} model, not {kind!r}")
    return model, cfg


def _table(res: dict) -> str:
    rows = [("MDLM (NELBO)", "nelbo")]
    if "edlm_t_per_token" in res:
        if res["num_is"] == 0:
            rows.append(("EDLM (Z = 1 exact)", "edlm_u"))
        else:
            rows += [
                (f"EDLM, T_n (n={res['num_is']})", "edlm_t"),
                (f"EDLM, U_n (n={res['num_is']})", "edlm_u"),
            ]
    lines = [f"{'':22} {'nats/token':>10} {'+- se':>8} {'ppl <=':>10} {'bits/token':>10}"]
    for label, key in rows:
        lines.append(
            f"{label:22} {res[key + '_per_token']:10.4f} {res[key + '_se']:8.4f} "
            f"{res[key + '_perplexity']:10.3f} {res[key + '_bits_per_token']:10.4f}"
        )
    lines.append(
        f"{res['num_sequences']} sequences of {res['length']} tokens, {res['num_t']} draws of t each"
    )
    if "log_z" in res:
        lines.append(f"log Z: {res['log_z']}")
    return "\n".join(lines)


def cmd_eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edlm eval", description=__doc__.splitlines()[0])
    p.add_argument("--denoiser", required=True, help="denoiser checkpoint (or run directory)")
    p.add_argument("--data", default="austen-char", help="austen-char | kjv-char | ... | a path")
    p.add_argument("--split", default=None, help="default: valid for austen-*, test for kjv-*")
    p.add_argument(
        "--tokenizer", default=None, help="for raw text paths (default: the checkpoint's)"
    )
    p.add_argument(
        "--energy", default=None, help="ar:CKPT | ar-full:CKPT | nce:CKPT | hf:PATH | hf-full:PATH"
    )
    p.add_argument("--num-sequences", type=int, default=64)
    p.add_argument("--num-t", type=int, default=8, help="draws of t per sequence (antithetic)")
    p.add_argument(
        "--num-is", type=int, default=16, help="proposal draws per noisy sequence for log Z"
    )
    p.add_argument("--batch-size", type=int, default=32, help="rows per network call")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    import torch

    from .data import NAMED_DATASETS, load_dataset
    from .evaluate import evaluate_likelihood

    device = _device(args.device)
    denoiser, cfg = _load(args.denoiser, "denoiser", device)
    named = args.data in NAMED_DATASETS
    split = args.split or (DEFAULT_SPLIT[NAMED_DATASETS[args.data][0]] if named else None)
    tokenizer = None if named else (args.tokenizer or cfg.tokenizer)
    try:
        data = load_dataset(
            args.data, split, tokenizer=tokenizer, block_size=denoiser.cfg.length, seed=args.seed
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"edlm eval: {e}") from None
    if data.header["vocab_size"] != denoiser.cfg.vocab_size:
        raise SystemExit(
            f"edlm eval: {args.data} is tokenized with {data.header['tokenizer']!r} "
            f"({data.header['vocab_size']} ids), the denoiser has {denoiser.cfg.vocab_size}"
        )
    from .checkpoint import CheckpointError
    from .models.energy import load_energy

    try:
        energy = (
            load_energy(args.energy, mask_id=denoiser.mask_id, vocab_size=denoiser.cfg.vocab_size, device=device)
            if args.energy
            else None
        )
    except (ValueError, FileNotFoundError, ImportError, CheckpointError) as e:
        raise SystemExit(f"edlm eval: {e}") from None
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        res = evaluate_likelihood(
            denoiser,
            data,
            num_sequences=min(args.num_sequences, len(data)),
            num_t=args.num_t,
            batch_size=args.batch_size,
            energy=energy,
            num_is=args.num_is,
            device=device,
            generator=generator,
        )
    except ValueError as e:
        raise SystemExit(f"edlm eval: {e}") from None
    res["data"], res["split"] = args.data, split
    print(json.dumps(res, indent=2) if args.json else _table(res))
    return 0
