"""The tests run against the installed edlm (with its compiled extension), not the source tree,
and the extension registers every op with a CPU kernel."""

from pathlib import Path

import pytest
import torch

import edlm

REPO = Path(__file__).resolve().parents[1]
OPS = ("masked_sample", "sequence_logprob", "importance_resample")


def test_imports_the_installed_package():
    pkg = Path(edlm.__file__).resolve().parent
    assert REPO / "python" not in pkg.parents and pkg != REPO / "python" / "edlm", (
        f"edlm was imported from the source tree ({pkg}); install it and run pytest from elsewhere"
    )
    assert Path(edlm._C.__file__).resolve().parent == pkg


def test_every_op_has_a_cpu_kernel_and_a_schema():
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"edlm::{name}", "CPU"), name
        assert hasattr(edlm.ops, name) and getattr(edlm.ops, name).__doc__


def test_philox_known_answers():
    # Random123's known-answer vectors for Philox4x32-10.
    f = edlm._C.philox4x32_10
    assert f([0, 0, 0, 0], 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert f([0xFFFFFFFF] * 4, 0xFFFFFFFFFFFFFFFF) == [
        0x408F276D,
        0x41C83B0E,
        0xA20BC7C6,
        0x6D5451FD,
    ]
    key = (0x299F31D0 << 32) | 0xA4093822
    assert f([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], key) == [
        0xD16CFE09,
        0x94FDCCEB,
        0x5001E420,
        0x24126EA1,
    ]


def test_cpu_capability_override(monkeypatch):
    have = edlm.ops.cpu_capabilities()
    assert have[0] == "default" and set(have) <= {"default", "avx2", "avx512"}
    assert "avx512" not in have or "avx2" in have
    monkeypatch.delenv("EDLM_CPU_CAPABILITY", raising=False)
    assert edlm.ops.cpu_capability() == have[-1]  # the widest by default
    for isa in have:
        monkeypatch.setenv("EDLM_CPU_CAPABILITY", isa)
        assert edlm.ops.cpu_capability() == isa
    for isa in {"avx2", "avx512"} - set(have):  # one this CPU lacks: an error naming it
        monkeypatch.setenv("EDLM_CPU_CAPABILITY", isa)
        with pytest.raises(RuntimeError, match=f"EDLM_CPU_CAPABILITY={isa}, but this CPU lacks"):
            edlm.ops.cpu_capability()
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", "default")
    assert edlm.ops.cpu_capability() == "default"
    monkeypatch.setenv("EDLM_CPU_CAPABILITY", "sse9")
    try:
        edlm.ops.cpu_capability()
    except RuntimeError as e:
        assert "EDLM_CPU_CAPABILITY must be 'default', 'avx2' or 'avx512', got 'sse9'" in str(e)
    else:
        raise AssertionError("a bad EDLM_CPU_CAPABILITY was accepted")
