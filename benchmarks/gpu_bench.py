"""GPU benchmark of the fused CUDA ops against the eager PyTorch code they replace and against
torch.compile of their references (edlm.reference), at the EDLM sampling shape (B, L, V) =
(16, 1024, 50258) bf16. Each op is checked against the reference before it is timed.

Prints one table (median time, effective GB/s, fraction of this card's measured device-to-device
copy bandwidth, speedups) and appends it, row by row as each is measured, to the file --out (the
results file of benchmarks/gpu_check.sh, which runs it), so that a run cut off keeps its rows.
The copy bandwidth is measured with torch and, where cupy is importable, with cupy's own
device-to-device copy, as an independent check of the denominator.
`python benchmarks/gpu_bench.py --help` for options.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

import edlm
from edlm import ops, reference


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


def copy_nbytes(nbytes: int = 4 << 30) -> int:
    free, _ = torch.cuda.mem_get_info()
    return min(nbytes, free // 4)


def copy_bandwidth(nbytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written, per second), torch's
    copy_ of one large buffer."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), reps=20)
    return 2 * nbytes / t


def cupy_copy_bandwidth(nbytes: int, reps: int = 20) -> float | None:
    """The same with cupy alone (its allocator, cudaMemcpyAsync device to device, its events), or
    None where cupy is not importable; optional, only used here."""
    try:
        import cupy
    except ImportError:
        return None
    src = cupy.empty(nbytes, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    stream = cupy.cuda.get_current_stream()

    def copy():
        dst.data.copy_from_device_async(src.data, nbytes, stream)

    for _ in range(3):
        copy()
    stream.synchronize()
    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        copy()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return 2 * nbytes / statistics.median(times)


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
    parser.add_argument("--out", required=True, help="file to append the table to, row by row")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and edlm._C.has_cuda()):
        raise SystemExit("gpu_bench: needs a GPU and edlm built with its CUDA kernels")
    out = Path(args.out)

    def write(text):
        print(text)
        with out.open("a") as f:
            f.write(text + "\n")

    B, L, V = (int(s) for s in args.shape.split(","))
    dtype = torch.bfloat16
    nbytes = copy_nbytes()
    copy_bw = copy_bandwidth(nbytes)
    torch.cuda.empty_cache()  # room for cupy's buffers
    cupy_bw = cupy_copy_bandwidth(nbytes)
    if cupy_bw is not None:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    cupy_note = (
        "cupy not importable (optional)"
        if cupy_bw is None
        else f"{cupy_bw / 1e9:.0f} GB/s with cupy's own copy ({cupy_bw / copy_bw:.2f}x torch's)"
    )
    write(
        f"Device-to-device copy of {nbytes / 2**30:.1f} GiB (read + write): "
        f"{copy_bw / 1e9:.0f} GB/s with torch's copy_; {cupy_note}. The table divides by torch's.\n"
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

    write(
        "| op | shape (B, L, V) | dtype | median ms | GB/s | of copy BW | vs eager | "
        "vs compiled ref | check |"
    )
    write("|---|---|---|---:|---:|---:|---:|---:|---|")
    fused_time = {}
    for op, shape, fused, eager, compiled, nbytes_op, check in cases:
        note = check()
        print(f"gpu_bench: {op}: all results match the reference ({note}); timing")
        t = cuda_time(fused, args.reps)
        fused_time[op] = t
        t_eager = cuda_time(eager, max(3, args.reps // 4))
        comp = "n/a"
        if not args.no_compile:
            try:
                comp = f"{cuda_time(compiled, max(3, args.reps // 4)) / t:.1f}x"
            except Exception as e:
                print(f"gpu_bench: torch.compile of the reference failed for {op}: {e}")
                comp = "failed"
        torch.cuda.empty_cache()
        gbs = nbytes_op / t / 1e9
        write(
            f"| {op} | {shape} | bf16 | {t * 1e3:.3f} | {gbs:.0f} | {gbs * 1e9 / copy_bw:.0%} | "
            f"{t_eager / t:.1f}x | {comp} | {note} |"
        )
    ratio = fused_time["masked_sample K=4"] / fused_time["masked_sample K=1"]
    write(
        f"\nmasked_sample K=4 / K=1 time: {ratio:.2f}x (target <= 1.5x). Fused CUDA ops against "
        "the eager PyTorch composite they replace and against torch.compile of the fp64 reference "
        f"in edlm.reference; all positions masked; edlm {edlm.__version__}."
    )


if __name__ == "__main__":
    main()
