"""GPU benchmark of the fused CUDA ops against the eager PyTorch code they replace and against
torch.compile of their references (edlm.reference), at the EDLM sampling shape (B, L, V) =
(16, 1024, 50258) bf16. Each op is checked against the reference before it is timed.

Prints one table (median time, effective GB/s, fraction of this card's measured device-to-device
copy bandwidth, speedups) and appends it to BENCHMARKS.md under a heading naming the card.
Run by benchmarks/gpu_check.sh; `python benchmarks/gpu_bench.py --help` for options.
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
from pathlib import Path

import torch

import edlm
from edlm import ops, reference

ROOT = Path(__file__).resolve().parents[1]


def cuda_time(fn, reps: int, warmup: int = 3) -> float:
    """Median seconds of fn() over `reps` calls, timed with CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written, per second)."""
    free, _ = torch.cuda.mem_get_info()
    nbytes = min(nbytes, free // 4)
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), reps=20)
    return 2 * nbytes / t


# ---------------------------------------------------------------------------------------------
# Baselines: the eager composites the ops replace.


def eager_masked_sample(logits, K):
    """Softmax, then argmax of p / Exp(1) noise (fp32-style clamps): one [B, L] draw per pass."""
    p = logits.softmax(-1)  # [B, L, V]
    draws = [(p / (1e-10 - (torch.rand_like(p) + 1e-10).log())).argmax(-1) for _ in range(K)]
    return torch.stack(draws, 1)  # [B, K, L]


def eager_sequence_logprob(logits, tokens, weight):
    lp = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]  # [N, L]
    return (lp.float() * weight).sum(-1)


# ---------------------------------------------------------------------------------------------
# Checks before timing.


def check_masked_sample(logits, xt, mask_id, K):
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens, logp = ops.masked_sample(logits, xt, mask_id, num_samples=K, generator=g)
    B, L, V = logits.shape
    assert tokens.shape == (B, K, L) and logp.shape == (B, K, L)
    assert bool(((tokens >= 0) & (tokens < V) & (tokens != mask_id)).all()), "bad token ids"
    # logp is the fp64 reference log-probability of the drawn token (row by row, to bound memory).
    worst = 0.0
    for b in range(B):
        ref = reference.masked_sample_probs(logits[b : b + 1], mask_id).log()[0]  # [L, V]
        ref_logp = ref.gather(-1, tokens[b].T).T  # [K, L]
        worst = max(worst, (ref_logp - logp[b].double()).abs().max().item())
    assert worst < 2e-3, f"masked_sample: logp differs from the reference by {worst}"
    # Distribution: chi-square of many draws on a few rows against the exact probabilities,
    # over the 50 likeliest tokens of each row and the rest pooled.
    small = logits[:1, :4].float().mul(2).to(logits.dtype)  # [1, 4, V], peakier
    n = 200_000
    g = torch.Generator(device="cuda").manual_seed(1)
    draws, _ = ops.masked_sample(small, xt[:1, :4], mask_id, num_samples=n, generator=g)
    probs = reference.masked_sample_probs(small, mask_id)[0]  # [4, V]
    for pos in range(4):
        top = probs[pos].topk(50).indices
        counts = torch.bincount(draws[0, :, pos], minlength=V).double()
        obs = torch.cat([counts[top], (n - counts[top].sum()).reshape(1)])
        exp = torch.cat([probs[pos][top], (1 - probs[pos][top].sum()).reshape(1)]) * n
        keep = exp > 5
        stat = (((obs - exp) ** 2)[keep] / exp[keep]).sum().item()
        df = int(keep.sum().item()) - 1
        bound = df + 6 * math.sqrt(2 * df)
        assert stat < bound, f"masked_sample: chi-square {stat:.1f} > {bound:.1f} (position {pos})"
    return "logp vs reference, chi-square ok"


def check_sequence_logprob(logits, tokens, weight):
    got = ops.sequence_logprob(logits, tokens, weight)
    want = torch.cat(
        [
            reference.sequence_logprob(logits[n : n + 1], tokens[n : n + 1], weight[n : n + 1])
            for n in range(logits.shape[0])
        ]
    )
    err = ((got - want).abs() / want.abs().clamp_min(1.0)).max().item()
    assert err < 1e-5, f"sequence_logprob: relative error {err} against the reference"
    return f"max rel err {err:.1e}"


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="16,1024,50258", help="B,L,V (default 16,1024,50258)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="file to append to")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and edlm._C.has_cuda()):
        raise SystemExit("gpu_bench: needs a GPU and edlm built with its CUDA kernels")

    B, L, V = (int(s) for s in args.shape.split(","))
    dtype = torch.bfloat16
    card = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth()
    print(
        f"gpu_bench: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"device-to-device copy {copy_bw / 1e9:.0f} GB/s"
    )

    torch.manual_seed(0)
    logits = (torch.randn(B, L, V, device="cuda") * 4).to(dtype)  # [B, L, V]
    mask_id = V - 1
    xt = torch.full((B, L), mask_id, device="cuda")  # all masked: every row is read
    tokens = torch.randint(0, V - 1, (B, L), device="cuda")
    weight = torch.ones(B, L, device="cuda")
    logits_bytes = logits.numel() * logits.element_size()

    compiled_ms = torch.compile(reference.masked_sample)
    compiled_sl = torch.compile(reference.sequence_logprob)
    cases = []  # (op, shape, fused, eager, compiled, bytes, check)
    for K in (1, 4):
        cases.append(
            (
                f"masked_sample K={K}",
                f"({B}, {L}, {V})",
                lambda K=K: ops.masked_sample(logits, xt, mask_id, num_samples=K),
                lambda K=K: eager_masked_sample(logits, K),
                lambda K=K: compiled_ms(logits, xt, mask_id, num_samples=K),
                logits_bytes + xt.numel() * 8 + B * K * L * (8 + 4),
                lambda K=K: check_masked_sample(logits, xt, mask_id, K),
            )
        )
    cases.append(
        (
            "sequence_logprob",
            f"({B}, {L}, {V})",
            lambda: ops.sequence_logprob(logits, tokens, weight),
            lambda: eager_sequence_logprob(logits, tokens, weight),
            lambda: compiled_sl(logits, tokens, weight),
            logits_bytes + tokens.numel() * 8 + weight.numel() * 4 + B * 4,
            lambda: check_sequence_logprob(logits, tokens, weight),
        )
    )

    rows = []
    fused_time = {}
    for op, shape, fused, eager, compiled, nbytes, check in cases:
        note = check()
        print(f"gpu_bench: {op}: all results match the reference ({note}); timing")
        t = cuda_time(fused, args.reps)
        fused_time[op] = t
        t_eager = cuda_time(eager, max(3, args.reps // 4))
        t_comp = None
        if not args.no_compile:
            try:
                t_comp = cuda_time(compiled, max(3, args.reps // 4))
            except Exception as e:
                print(f"gpu_bench: torch.compile of the reference failed for {op}: {e}")
        torch.cuda.empty_cache()
        gbs = nbytes / t / 1e9
        rows.append(
            (
                op,
                shape,
                "bf16",
                t * 1e3,
                gbs,
                gbs * 1e9 / copy_bw,
                t_eager / t,
                None if t_comp is None else t_comp / t,
            )
        )

    header = (
        "| op | shape (B, L, V) | dtype | median ms | GB/s | of copy BW | vs eager | "
        "vs compiled ref |"
    )
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|"]
    for op, shape, dt, ms, gbs, frac, sp_eager, sp_comp in rows:
        comp = "n/a" if sp_comp is None else f"{sp_comp:.1f}x"
        lines.append(
            f"| {op} | {shape} | {dt} | {ms:.3f} | {gbs:.0f} | {frac:.0%} | "
            f"{sp_eager:.1f}x | {comp} |"
        )
    ratio = fused_time["masked_sample K=4"] / fused_time["masked_sample K=1"]
    summary = (
        f"masked_sample K=4 / K=1 time: {ratio:.2f}x (target <= 1.5x). "
        f"Copy bandwidth: {copy_bw / 1e9:.0f} GB/s (torch copy_ of a large buffer, "
        "read + write)."
    )
    table = "\n".join(lines)
    print(table)
    print(summary)

    out = Path(args.out)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "" if out.exists() else "# Benchmarks\n"
    text += (
        f"\n## GPU: {card} ({when}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"edlm {edlm.__version__})\n\n"
        "Fused CUDA ops against the eager PyTorch composite they replace and against "
        "torch.compile of the fp64 reference in edlm.reference; all positions masked. "
        "Produced by benchmarks/gpu_bench.py.\n\n"
        f"{table}\n\n{summary}\n"
    )
    with out.open("a") as f:
        f.write(text)
    print(f"gpu_bench: appended to {out}")


if __name__ == "__main__":
    main()
