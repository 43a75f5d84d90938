"""The error of a failed torch.compile, shared by compile_forwards and ARModel's compiled step."""

from __future__ import annotations


class CompileError(RuntimeError):
    """torch.compile is unavailable here or failed on a model (e.g. no working C++ compiler)."""


def first_line(e: Exception) -> str:
    """torch's first non-blank line of an exception (its messages run to pages)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
