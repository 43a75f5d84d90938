"""The sweep behind `edlm sweep` and `edlm demo`: sampling steps x methods (MDLM, EDLM with any
energies; k and window as lists), each cell measured (generative perplexity and bits per character
under a judge, unigram entropy, distinct-n, calls, seconds, and the means over importance-sampling
steps of the ESS, the standard deviation of log w and the chosen candidate's energy gain), as rows
for a CSV and a PNG of quality against steps and against wall-clock seconds per sample (EDLM.md
section 5).

Every cell of the grid samples with the same seed (common random numbers across cells), times
only the sampling (the first cell is preceded by an untimed warm-up call), and is scored by the
same judge. `speed_at_equal_quality` reads the CSV rows back: the steps and seconds each method
needs to reach a given generative perplexity, interpolated between grid points.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .judge import distinct_n, judge_scores, ngram_entropy, unigram_entropy
from .oracle import MarkovSource
from .sampling import sample

FIELDS = [
    "method",
    "steps",
    "k",
    "window",
    "num_samples",
    "seed",
    "gen_ppl",
    "judge_bpc",
    "entropy",
    "distinct_2",
    "distinct_3",
    "oracle_bpc",
    "oracle_bpc_se",
    "oracle_gap",
    "unigram_entropy",
    "bigram_entropy",
    "denoiser_calls",
    "energy_calls",
    "is_steps",
    "mean_ess",
    "mean_sd_log_w",
    "mean_energy_gain",
    "seconds_per_sample",
]


@dataclass
class Method:
    """A sampler in the grid: a label and its energy (None: MDLM). Reference rows instead: `ar`,
    an AR model sampled ancestrally (`ARModel.generate`: one network call per token), or
    `source`, exact samples of a `MarkovSource`; each is one cell, at steps = the length."""

    name: str
    energy: object = None
    ar: object = None
    source: MarkovSource | None = None

    @property
    def reference(self) -> bool:
        return self.ar is not None or self.source is not None


def grid(
    methods: list[Method],
    steps: list[int],
    ks: list[int],
    windows: list[float],
    length: int = 0,
) -> list[tuple]:
    """The cells (method, steps, k, window): MDLM once per step count (k = 1, window = 0), each
    EDLM method at every (steps, k, window), a reference row (AR, exact samples) once at steps =
    `length`."""
    cells = []
    for m in methods:
        if m.reference:
            cells.append((m, length, 1, 0.0))
            continue
        for n in steps:
            if m.energy is None:
                cells.append((m, n, 1, 0.0))
            else:
                cells += [(m, n, k, w) for k in ks for w in windows]
    return cells


def run_sweep(
    denoiser,
    methods: list[Method],
    *,
    steps: list[int],
    ks: list[int] = (4,),
    windows: list[float] = (1.0,),
    num_samples: int = 16,
    batch_size: int = 16,
    length: int | None = None,
    mask_id: int | None = None,
    decode=None,
    judge=None,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
    samples_out=None,
    prompt: torch.Tensor | None = None,
    oracle: MarkovSource | None = None,
) -> list[dict]:
    """Samples every cell of the grid and measures it; returns one dict per cell (FIELDS, and
    "texts": the decoded samples, or None without `decode`).

    decode: token ids -> text, for the judge and `samples_out` (a writable text file, JSONL).
    judge: a `Judge` (or None: gen_ppl is NaN). prompt: int64 [length], mask_id where free: the
    tokens every sample keeps. oracle: the source the samples are scored under exactly:
    "oracle_bpc" = mean over samples of -log2 p(x) / length, "oracle_bpc_se" its standard error,
    "oracle_gap" = oracle_bpc minus what exact samples score on average (the source's
    `sequence_entropy(length)`; > 0: worse than the source). NaN without it (and with a prompt,
    which conditions the samples). "unigram_entropy" and "bigram_entropy" pool every sample's
    characters (pairs), to set beside the source's `ngram_entropy(1)` and `ngram_entropy(2)`."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(
            f"run_sweep: num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}"
        )
    if any(n < 1 for n in steps) or any(k < 1 for k in ks) or any(not 0 <= w <= 1 for w in windows):
        raise ValueError(
            f"run_sweep: steps and k must be >= 1 and windows in [0, 1], got {steps}, {ks}, {windows}"
        )
    if judge is not None and decode is None:
        raise ValueError("run_sweep: a judge needs `decode` to turn samples into text")
    mask_id = denoiser.mask_id if mask_id is None else mask_id
    length = length or denoiser.cfg.length
    cells = grid(methods, steps, ks, windows, length)

    if prompt is not None and tuple(prompt.shape) != (length,):
        raise ValueError(
            f"run_sweep: prompt must be [length] = [{length}], got {list(prompt.shape)}"
        )

    if prompt is not None and any(m.reference for m in methods):
        raise ValueError("run_sweep: the reference rows (AR, exact samples) take no prompt")

    def draw(method, n, k, w, rows, generator):
        if method.ar is not None:
            x = method.ar.generate(rows, length, generator=generator, device=device)
            return x, {"network_calls": length, "energy_calls": 0, "is_steps": 0, **_NO_IS}
        if method.source is not None:
            x = method.source.sample(rows, length, generator=generator, device=device)
            return x, {"network_calls": 0, "energy_calls": 0, "is_steps": 0, **_NO_IS}
        fixed = None if prompt is None else prompt.to(device).expand(rows, length).clone()
        return sample(
            denoiser,
            batch_size=rows,
            length=length,
            mask_id=mask_id,
            steps=n,
            energy=method.energy,
            num_candidates=k,
            window=w,
            generator=generator,
            return_stats=True,
            device=device,
            prompt=fixed,
        )

    draw(cells[0][0], 2, 1, 0.0, 1, torch.Generator(device=device).manual_seed(seed))  # warm-up
    results = []
    bar = tqdm(cells, desc="edlm sweep", unit="cell", disable=not progress)
    for method, n, k, w in bar:
        bar.set_postfix_str(f"{method.name} steps={n} k={k} window={w:g}")
        generator = torch.Generator(device=device).manual_seed(seed)
        ids, calls, ecalls, is_steps, seconds = [], 0, 0, 0, 0.0
        per_step = {"ess": [], "sd_log_w": [], "energy_gain": []}
        for start in range(0, num_samples, batch_size):
            rows = min(batch_size, num_samples - start)
            t0 = time.perf_counter()
            x, stats = draw(method, n, k, w, rows, generator)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            ids += x.tolist()
            calls += stats["network_calls"]
            ecalls += stats["energy_calls"]
            is_steps += stats["is_steps"]
            for name, values in per_step.items():
                if stats[name].numel():
                    values.append(stats[name].float().flatten().cpu())
        texts = [decode(r) for r in ids] if decode is not None else None
        scores = judge_scores(texts, judge) if judge is not None else {}
        exact = _oracle_scores(oracle, ids, length) if oracle is not None and prompt is None else {}
        row = {
            "method": method.name,
            "steps": n,
            "k": k,
            "window": w,
            "num_samples": num_samples,
            "seed": seed,
            "gen_ppl": scores.get("perplexity", math.nan),
            "judge_bpc": scores.get("bits_per_char", math.nan),
            "entropy": unigram_entropy(ids),
            "distinct_2": distinct_n(ids, 2),
            "distinct_3": distinct_n(ids, 3),
            "oracle_bpc": exact.get("bpc", math.nan),
            "oracle_bpc_se": exact.get("se", math.nan),
            "oracle_gap": exact.get("gap", math.nan),
            "unigram_entropy": ngram_entropy(ids, 1),
            "bigram_entropy": ngram_entropy(ids, 2) if length > 1 else math.nan,
            "denoiser_calls": calls,
            "energy_calls": ecalls,
            "is_steps": is_steps,
            "mean_ess": _mean(per_step["ess"]),
            "mean_sd_log_w": _mean(per_step["sd_log_w"]),
            "mean_energy_gain": _mean(per_step["energy_gain"]),
            "seconds_per_sample": seconds / num_samples,
            "texts": texts,
        }
        results.append(row)
        if samples_out is not None:
            for i, r in enumerate(ids):
                rec = {
                    "method": method.name,
                    "steps": n,
                    "k": k,
                    "window": w,
                    "seed": seed,
                    "index": i,
                }
                if texts is not None:
                    rec["text"] = texts[i]
                rec["tokens"] = r
                samples_out.write(json.dumps(rec) + "\n")
    return results


_NO_IS = {name: torch.empty(0) for name in ("ess", "sd_log_w", "energy_gain")}


def _oracle_scores(source: MarkovSource, ids: list[list[int]], length: int) -> dict:
    """Exact bits per character of samples under the source: mean, standard error, gap."""
    x = torch.tensor(ids, dtype=torch.long)
    if int(x.max()) >= source.transition.shape[-1]:
        raise ValueError("run_sweep: a sample holds a token outside the oracle's alphabet")
    bpc = -source.log_prob(x) / (math.log(2) * length)  # [N]
    se = float(bpc.std(correction=1) / math.sqrt(len(bpc))) if len(bpc) > 1 else math.nan
    return {
        "bpc": float(bpc.mean()),
        "se": se,
        "gap": float(bpc.mean()) - source.sequence_entropy(length),
    }


def _mean(values: list[torch.Tensor]) -> float:
    return float(torch.cat(values).mean()) if values else math.nan


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: (f"{v:.6g}" if isinstance(v, float) else v)
                    for k, v in r.items()
                    if k in FIELDS
                }
            )


def read_csv(path) -> list[dict]:
    ints = {"steps", "k", "num_samples", "seed", "denoiser_calls", "energy_calls", "is_steps"}
    with open(path, newline="") as f:
        rows = [
            {
                k: (v if k == "method" else int(v) if k in ints else float(v or "nan"))
                for k, v in r.items()
            }
            for r in csv.DictReader(f)
        ]
    # a CSV written before a column existed reads it as NaN
    return [{**{k: math.nan for k in FIELDS if k not in ints}, **r} for r in rows]


def series(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped into curves over steps: one per (method, k, window), sorted by steps."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        label = (
            r["method"]
            if r["k"] == 1 and r["window"] == 0
            else f"{r['method']} k={r['k']} w={r['window']:g}"
        )
        out.setdefault(label, []).append(r)
    return {k: sorted(v, key=lambda r: r["steps"]) for k, v in out.items()}


def _log_lerp(x0: float, x1: float, a: float) -> float:
    return math.exp(math.log(x0) + a * (math.log(x1) - math.log(x0)))


def first_reach(curve: list[dict], target: float, key: str = "gen_ppl") -> dict | None:
    """Where a curve (sorted by steps) first reaches `key` <= target: the steps and seconds per
    sample, interpolated linearly in log steps / log seconds between the two grid points around
    the crossing, and "at_most": True when the first grid point already reaches it (the true need
    may be lower). None if it never does (or the curve has no `key`)."""
    prev = None
    for r in curve:
        v = r[key]
        if math.isnan(v):
            return None
        if v <= target:
            if prev is None or prev[key] == v:
                # at the curve's first point the need is at most this (the grid has nothing below)
                return {
                    "steps": float(r["steps"]),
                    "seconds": r["seconds_per_sample"],
                    "at_most": prev is None,
                }
            a = (prev[key] - target) / (prev[key] - v)  # in (0, 1]
            return {
                "steps": _log_lerp(prev["steps"], r["steps"], a),
                "seconds": _log_lerp(prev["seconds_per_sample"], r["seconds_per_sample"], a),
                "at_most": False,
            }
        prev = r
    return None


def speed_at_equal_quality(
    rows: list[dict], target: float, baseline: str = "MDLM", key: str = "gen_ppl"
) -> list[dict]:
    """For each curve: the steps and seconds it needs to reach `key` <= `target` (generative
    perplexity by default), and the baseline's need divided by its own (> 1: faster)."""
    curves = series(rows)
    base = first_reach(curves[baseline], target, key) if baseline in curves else None
    out = []
    for label, curve in curves.items():
        hit = first_reach(curve, target, key)
        rec = {
            "curve": label,
            "target": target,
            "steps": None,
            "seconds": None,
            "steps_ratio": None,
            "seconds_ratio": None,
            "at_most": False,
        }
        if hit is not None:
            rec.update(steps=hit["steps"], seconds=hit["seconds"], at_most=hit["at_most"])
            if base is not None:
                rec.update(
                    steps_ratio=base["steps"] / hit["steps"],
                    seconds_ratio=base["seconds"] / hit["seconds"],
                )
        out.append(rec)
    return out


def plot(rows: list[dict], path, title: str = "") -> None:
    """Generative perplexity against steps and against seconds per sample, and entropy against
    steps, one line per curve (a figure of entropy alone when the rows have no perplexity)."""
    try:
        import matplotlib  # optional dependency
    except ImportError:
        raise ImportError("plot: the PNG needs matplotlib: pip install matplotlib") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = series(rows)
    has_ppl = any(not math.isnan(r["gen_ppl"]) for r in rows)
    panels = (
        [
            ("steps", "gen_ppl"),
            ("seconds_per_sample", "gen_ppl"),
            ("steps", "judge_bpc"),
            ("steps", "entropy"),
        ]
        if has_ppl
        else [("steps", "entropy")]
    )
    cols = min(len(panels), 2)
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.6 * cols, 4.2 * rows_n), squeeze=False)
    names = {
        "steps": "sampling steps",
        "seconds_per_sample": "seconds per sample",
        "gen_ppl": "generative perplexity (per judge token)",
        "judge_bpc": "judge NLL, bits per character",
        "entropy": "unigram entropy (bits)",
    }
    for ax, (x, y) in zip(axes.flat, panels):
        for label, curve in curves.items():
            ax.plot([r[x] for r in curve], [r[y] for r in curve], marker="o", label=label)
        ax.set_xscale("log", base=2 if x == "steps" else 10)
        if y == "gen_ppl":
            ax.set_yscale("log")
        ax.set_xlabel(names[x])
        ax.set_ylabel(names[y])
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title if has_ppl else f"{title} (no judge: entropy only)".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
