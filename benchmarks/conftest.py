"""Benchmark harness: each benchmark checks its result, is timed with pytest-benchmark, and is
compared, in the same run, with the eager PyTorch code it replaces (the group's baseline),
`torch.compile` of that code (its compiled peer) and the memory floor (one read of the same
tensor, `x.sum(-1)`). At the end a table of medians, ratios to each, CPU utilization and peak extra
memory is printed (with the machine): only ratios carry from one machine to another."""

import atexit
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import pytest
import torch

# torch.compile's FX-graph cache is keyed without our ops' schemas, so a cache written against an
# older build of edlm._C replays its graphs against the old schema. Each session gets its own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="edlm-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


def _read_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def profile_call(fn):
    """One call of fn: (CPU utilization = CPU seconds / wall seconds, peak extra resident bytes).

    The peak is the process's high-water mark (VmHWM, reset through /proc/self/clear_refs) above
    its resident size before the call; None where Linux does not offer that.
    """
    fn()  # warm: allocator caches, lazy initialization
    before = _read_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        can_peak = True
    except OSError:
        can_peak = False
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    cpu1, wall1 = time.process_time(), time.perf_counter()
    peak = _read_status("VmHWM") if can_peak else None
    extra = None if peak is None or before is None else max(0, peak - before)
    return (cpu1 - cpu0) / max(wall1 - wall0, 1e-9), extra


@dataclass
class Row:
    group: str
    label: str
    median_s: float | None
    baseline: bool
    cpu_util: float
    peak_extra: int | None
    note: str = ""
    role: str = ""  # "compiled" (the baseline's torch.compile peer), "floor", or ""


@dataclass
class Table:
    rows: list = field(default_factory=list)

    def add(self, benchmark, group, label, fn, baseline=False, note="", rounds=None, role=""):
        """Times fn with `benchmark` (already checked by the caller) and records a row.

        role: "compiled" marks the group's torch.compile peer, "floor" its memory floor (each
        other row of the group is then also printed as a ratio to them)."""
        rounds = rounds or (3 if baseline else 10)
        benchmark.group = group
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        util, extra = profile_call(fn) if median is not None else (float("nan"), None)
        self.rows.append(Row(group, label, median, baseline, util, extra, note, role))

    def record(self, group, label, seconds, note=""):
        """A row measured by the caller (one timed run, e.g. a whole sampler split by parts)."""
        self.rows.append(Row(group, label, seconds, False, float("nan"), None, note))


_TABLE = Table()


@pytest.fixture(scope="session")
def table():
    return _TABLE


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import edlm

    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, kernels: {edlm.ops.cpu_capability()}"
    )


def _ratio(row, ref, invert):
    if ref is None or ref is row:
        return "-"
    return f"{(ref.median_s / row.median_s) if invert else (row.median_s / ref.median_s):.2f}x"


def pytest_terminal_summary(terminalreporter):
    rows = [r for r in _TABLE.rows if r.median_s is not None]
    if not rows:
        return
    tr = terminalreporter
    tr.section("edlm: fused ops against the eager code they replace, its compiled peer, the floor")
    tr.write_line(f"machine: {machine()}")
    tr.write_line(
        "speedup = eager median / median; vs compiled = compiled median / median; "
        "x floor = median / floor median (dtype-matched floors are labelled)"
    )
    tr.write_line(
        f"{'group':<34} {'variant':<40} {'median ms':>10} {'speedup':>8} {'vs compiled':>11} "
        f"{'x floor':>8} {'cpu util':>8} {'peak extra MB':>14}"
    )
    for r in rows:
        group = [b for b in rows if b.group == r.group]
        base = next((b for b in group if b.baseline), None)
        compiled = next((b for b in group if b.role == "compiled"), None)
        # The floor of the row's own dtype: the floor row whose label names it, else the first.
        floors = [b for b in group if b.role == "floor"]
        floor = next((b for b in floors if b.label.split()[-1] in r.label.split()), None)
        floor = floor or (floors[0] if floors else None)
        peak = f"{r.peak_extra / 2**20:14.1f}" if r.peak_extra is not None else f"{'n/a':>14}"
        tr.write_line(
            f"{r.group:<34} {r.label:<40} {r.median_s * 1e3:10.2f} {_ratio(r, base, True):>8} "
            f"{_ratio(r, compiled, True):>11} {_ratio(r, floor, False):>8} {r.cpu_util:8.2f} {peak}"
            + (f"  {r.note}" if r.note else "")
        )
