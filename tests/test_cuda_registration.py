"""A build with CUDA kernels registers one for every op (checked without a GPU: registration
needs none); skipped in a CPU-only build."""

import pytest
import torch

import edlm

OPS = ("masked_sample", "sequence_logprob", "importance_resample")


@pytest.mark.skipif(
    not edlm._C.has_cuda(),
    reason="edlm was built without CUDA kernels (CPU torch, no nvcc or EDLM_CUDA=0)",
)
@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_cuda_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"edlm::{name}", "CUDA"), name
