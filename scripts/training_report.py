"""Writes the training section of RESULTS.md from finished runs: the validation curves (table and,
with matplotlib, a PNG), and the final validation bits per character of the denoiser (NELBO bound)
and the AR model (exact NLL) measured with `edlm.likelihood` on the whole validation split slice.

python scripts/training_report.py --denoiser runs/tiny-denoiser --ar runs/tiny-ar --out results/
"""

import argparse
import json
import math
import platform
from pathlib import Path

import torch

from edlm import checkpoint
from edlm.data import load_dataset
from edlm.likelihood import evaluate_likelihood


def curve(run: Path):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "valid_loss" in r], rows


@torch.no_grad()
def ar_bits(model, data, num_sequences: int) -> tuple[float, float]:
    x = data.blocks(data.indices()[:num_sequences])
    nll = (
        torch.cat(
            [
                torch.nn.functional.cross_entropy(
                    model(b).flatten(0, 1), b.flatten(), reduction="none"
                )
                .view(b.shape)
                .sum(-1)
                for b in x.split(16)
            ]
        ).double()
        / x.shape[1]
    )
    return nll.mean().item() / math.log(2), nll.std().item() / math.sqrt(len(nll)) / math.log(2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--denoiser", required=True)
    p.add_argument("--ar", required=True)
    p.add_argument("--out", default="results")
    p.add_argument("--num-sequences", type=int, default=256)
    p.add_argument("--num-t", type=int, default=16)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    den, dcfg = checkpoint.load_model(args.denoiser, kind="denoiser")
    ar, _acfg = checkpoint.load_model(args.ar, kind="ar")
    results = {}
    for label, data_name, split in (
        ("Austen valid (Persuasion)", "austen-char", "valid"),
        ("KJV (zero-shot)", "kjv-char", "test"),
    ):
        data = load_dataset(data_name, split, shuffle=True, seed=0)
        n = min(args.num_sequences, len(data))
        res = evaluate_likelihood(
            den,
            data,
            num_sequences=n,
            num_t=args.num_t,
            batch_size=32,
            generator=torch.Generator().manual_seed(0),
        )
        bits, se = ar_bits(ar, data, n)
        results[label] = {
            "mdlm_bits": res["nelbo_bits_per_token"],
            "mdlm_se": res["nelbo_se"] / math.log(2),
            "ar_bits": bits,
            "ar_se": se,
            "n": n,
        }
    dcurve, drows = curve(Path(args.denoiser))
    acurve, arows = curve(Path(args.ar))
    lines = [
        "## Training the tiny models on the Austen characters",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.",
        (
            f"Denoiser: {sum(p.numel() for p in den.parameters()) / 1e6:.2f}M parameters, "
            f"{checkpoint.load(args.denoiser)['step']} steps; "
            f"AR: {sum(p.numel() for p in ar.parameters()) / 1e6:.2f}M parameters, {checkpoint.load(args.ar)['step']} steps; "
            f"batch {dcfg.batch_size} x {dcfg.model_config.length} characters; EMA weights evaluated."
        ),
        "",
        "| set | MDLM NELBO bound (bits/char) | AR NLL (bits/char) | sequences |",
        "|---|---|---|---|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | <= {r['mdlm_bits']:.3f} +- {r['mdlm_se']:.3f} | {r['ar_bits']:.3f} +- {r['ar_se']:.3f} | {r['n']} |"
        )
    lines += [
        "",
        "Validation during training (bits per character, raw / EMA weights):",
        "",
        "| step | denoiser (bound) | AR |",
        "|---|---|---|",
    ]
    by_step = {r["step"]: r for r in acurve}
    for r in dcurve:
        a = by_step.get(r["step"])
        d = f"{r['valid_bits_per_token']:.3f} / {r.get('valid_bits_per_token_ema', float('nan')):.3f}"
        s = (
            f"{a['valid_bits_per_token']:.3f} / {a.get('valid_bits_per_token_ema', float('nan')):.3f}"
            if a
            else "-"
        )
        lines.append(f"| {r['step']} | {d} | {s} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for rows, label in ((drows, "denoiser NELBO (train)"), (arows, "AR NLL (train)")):
            ax.plot(
                [r["step"] for r in rows],
                [r["loss"] / math.log(2) for r in rows],
                alpha=0.5,
                label=label,
            )
        for rows, label in ((dcurve, "denoiser bound (valid, EMA)"), (acurve, "AR (valid, EMA)")):
            ax.plot(
                [r["step"] for r in rows],
                [r.get("valid_bits_per_token_ema", r["valid_bits_per_token"]) for r in rows],
                "o-",
                label=label,
            )
        ax.set_xlabel("step")
        ax.set_ylabel("bits per character")
        ax.set_ylim(1.0, 4.0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=120)
        lines += ["", f"![training curves]({out.name}/training_curves.png)"]
    except ImportError:
        lines += ["", "(matplotlib is not installed: no plot)"]
    (out / "training.md").write_text("\n".join(lines) + "\n")
    (out / "training.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
