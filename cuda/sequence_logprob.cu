// edlm::sequence_logprob on CUDA: sum over positions of weight * log_softmax(logits)[token].
// One block per weighted position reads its row once (16-byte loads, per-thread online max and
// fp32 exp-sum, fp64 across threads); rows with weight 0 are never read. A second small kernel
// sums each sequence's terms in fp64.
//
// Bad input. Shapes, dtypes and devices are checked on the host (csrc/checks.cpp). A token id
// outside [0, V) at a position of nonzero weight is only visible on the device; raising it from
// the host would need a device-to-host sync in every call. So the kernel prints the op and the
// position, then fails a CUDA_KERNEL_ASSERT: the next synchronizing call raises "CUDA error:
// device-side assert triggered" and the CUDA context is unusable until the process restarts, as
// for any device-side assert in PyTorch. NaN or +inf logits in a weighted row give a NaN result,
// as on the CPU (a reduction reports them honestly; it never picks a token from them).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <limits>

#include "../csrc/checks.h"
#include "common.cuh"

namespace edlm::cuda {

namespace {

constexpr int kThreads = 256;

struct SequenceLogprobArgs {
  const void* logits;     // [N, L, V], any layout with unit column stride
  const int64_t* tokens;  // [N, L] contiguous
  const double* weight;   // [N, L] or null (all ones)
  double* terms;          // [N, L] out
  int64_t L;
  int64_t stride_n, stride_l;  // logits strides, in elements
  int V;
};

template <typename D>
__global__ void __launch_bounds__(kThreads) sequence_logprob_kernel(const SequenceLogprobArgs a) {
  using S = typename D::storage;
  const int tid = threadIdx.x;
  const int64_t pos = blockIdx.x;
  const double w = a.weight ? a.weight[pos] : 1.0;
  if (w == 0.0) {
    if (tid == 0) a.terms[pos] = 0.0;
    return;
  }
  const int64_t token = a.tokens[pos];
  if (!(token >= 0 && token < a.V)) {
    if (tid == 0) {
      EDLM_DEVICE_CHECK(false,
                        "sequence_logprob: tokens[%lld, %lld] = %lld is outside [0, V) with V = %d",
                        (long long)(pos / a.L), (long long)(pos % a.L), (long long)token, a.V);
    }
    return;
  }
  const S* row =
      static_cast<const S*>(a.logits) + (pos / a.L) * a.stride_n + (pos % a.L) * a.stride_l;
  const OnlineSum acc = row_pass<D, kThreads>(row, row_layout<D>(row, a.V), -1, kLog2e, tid);
  if (__syncthreads_or(acc.invalid())) {
    if (tid == 0) a.terms[pos] = std::numeric_limits<double>::quiet_NaN();
    return;
  }

  using BlockReduceF = cub::BlockReduce<float, kThreads>;
  using BlockReduceD = cub::BlockReduce<double, kThreads>;
  __shared__ union {
    typename BlockReduceF::TempStorage f;
    typename BlockReduceD::TempStorage d;
  } tmp;
  __shared__ float row_max_sh;
  const float row_max_t0 = BlockReduceF(tmp.f).Reduce(acc.m, MaxOp{});
  if (tid == 0) row_max_sh = row_max_t0;
  __syncthreads();
  const double row_max = row_max_sh;
  const double part =
      acc.s > 0.f ? static_cast<double>(acc.s) * exp(static_cast<double>(acc.m) - row_max) : 0.0;
  const double total = BlockReduceD(tmp.d).Sum(part);
  if (tid == 0) {
    const double lse = row_max + log(total);
    const double x = D::to_float(row[token]);
    a.terms[pos] = w * (x - lse);
  }
}

// out[n] = sum_l terms[n, l] in fp64.
__global__ void __launch_bounds__(kThreads)
    sum_rows_kernel(const double* terms, int64_t L, float* out) {
  const int64_t n = blockIdx.x;
  double s = 0.0;
  for (int64_t l = threadIdx.x; l < L; l += kThreads) s += terms[n * L + l];
  using BlockReduceD = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduceD::TempStorage tmp;
  const double total = BlockReduceD(tmp).Sum(s);
  if (threadIdx.x == 0) out[n] = static_cast<float>(total);
}

at::Tensor sequence_logprob_cuda(const at::Tensor& logits_in, const at::Tensor& tokens_in,
                                 const std::optional<at::Tensor>& weight_in) {
  constexpr const char* op = "sequence_logprob";
  check_sequence_logprob(logits_in, tokens_in, weight_in);
  TORCH_CHECK(logits_in.is_cuda(), op, ": expected CUDA tensors, got ", logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  // Rows are read in place wherever their columns are adjacent (row_layout handles any address).
  const at::Tensor logits = unit_column_stride(logits_in);
  const at::Tensor tokens = tokens_in.contiguous();
  const int64_t N = logits.size(0), L = logits.size(1), V = logits.size(2);
  TORCH_CHECK(V <= std::numeric_limits<int>::max(), op, ": V must be below 2^31, got ", V);
  TORCH_CHECK(N * L <= std::numeric_limits<int>::max(), op,
              ": N * L must be below 2^31 on CUDA (one block per position), got ", N * L);
  const at::Tensor weight =
      weight_in.has_value() ? weight_in->to(at::kDouble).contiguous() : at::Tensor();

  at::Tensor out = at::empty({N}, logits.options().dtype(at::kFloat));
  if (N == 0) return out;
  // Nothing to sum: zeros, as on the CPU, and no launch (N blocks may exceed the grid limit).
  if (L == 0) return out.zero_();
  at::Tensor terms = at::empty({N, L}, logits.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SequenceLogprobArgs a{};
  a.logits = logits.data_ptr();
  a.tokens = tokens.data_ptr<int64_t>();
  a.weight = weight.defined() ? weight.data_ptr<double>() : nullptr;
  a.terms = terms.data_ptr<double>();
  a.L = L;
  a.stride_n = logits.stride(0);
  a.stride_l = logits.stride(1);
  a.V = static_cast<int>(V);
  const dim3 grid(static_cast<unsigned>(N * L));
  switch (logits_type(op, logits)) {
    case cpu::LogitsType::kFloat:
      sequence_logprob_kernel<F32><<<grid, kThreads, 0, stream>>>(a);
      break;
    case cpu::LogitsType::kBFloat16:
      sequence_logprob_kernel<BF16><<<grid, kThreads, 0, stream>>>(a);
      break;
    case cpu::LogitsType::kHalf:
      sequence_logprob_kernel<F16><<<grid, kThreads, 0, stream>>>(a);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_rows_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(terms.data_ptr<double>(), L,
                                                                     out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CUDA, m) { m.impl("sequence_logprob", &sequence_logprob_cuda); }

}  // namespace edlm::cuda
