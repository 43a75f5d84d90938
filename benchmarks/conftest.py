"""Benchmark harness: each benchmark checks its result, is timed with pytest-benchmark, and is
compared with the eager PyTorch code it replaces, timed in the same run. At the end a table of
medians, ratios, CPU utilization and peak extra memory is printed (with the machine)."""

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


@dataclass
class Table:
    rows: list = field(default_factory=list)

    def add(self, benchmark, group, label, fn, baseline=False, note="", rounds=None):
        """Times fn with `benchmark` (already checked by the caller) and records a row."""
        rounds = rounds or (3 if baseline else 10)
        benchmark.group = group
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        util, extra = profile_call(fn) if median is not None else (float("nan"), None)
        self.rows.append(Row(group, label, median, baseline, util, extra, note))

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


def pytest_terminal_summary(terminalreporter):
    rows = [r for r in _TABLE.rows if r.median_s is not None]
    if not rows:
        return
    tr = terminalreporter
    tr.section("edlm: fused ops against the eager code they replace")
    tr.write_line(f"machine: {machine()}")
    tr.write_line(
        f"{'group':<34} {'variant':<38} {'median ms':>10} {'speedup':>8} {'cpu util':>8} {'peak extra MB':>14}"
    )
    for r in rows:
        base = next((b for b in rows if b.group == r.group and b.baseline), None)
        speedup = f"{base.median_s / r.median_s:7.1f}x" if base is not None else "       -"
        peak = f"{r.peak_extra / 2**20:14.1f}" if r.peak_extra is not None else f"{'n/a':>14}"
        tr.write_line(
            f"{r.group:<34} {r.label:<38} {r.median_s * 1e3:10.2f} {speedup:>8} {r.cpu_util:8.2f} {peak}"
            + (f"  {r.note}" if r.note else "")
        )
