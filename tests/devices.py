"""Whether CUDA tests can run: a GPU and a build of edlm with its CUDA kernels."""

import torch

import edlm

HAS_CUDA = torch.cuda.is_available() and edlm._C.has_cuda()
