// edlm::importance_resample on CUDA: per row, normalized importance weights in fp64, their
// effective sample size, and i.i.d. inverse-CDF draws keyed by (draw, row) with Philox exactly as
// on the CPU. One warp per row: lane i holds a contiguous chunk of the K candidates; a warp scan
// of the chunk masses picks a chunk, and a sequential fp64 scan inside it picks the candidate.
//
// Bad input. Shapes and dtypes are checked on the host (csrc/checks.cpp). NaN or +inf
// log-weights, and a row that is -inf for every candidate, are only visible on the device;
// raising them from the host would need a device-to-host sync in every call (no CUDA graphs, a
// stalled sampling loop). So the kernel prints the op and the row, then fails a
// CUDA_KERNEL_ASSERT: the next synchronizing call raises "CUDA error: device-side assert
// triggered" and the CUDA context is unusable until the process restarts, as for any device-side
// assert in PyTorch. No garbage is ever returned silently. For a Python exception instead, run
// the same call on the CPU.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <ATen/cuda/PhiloxUtils.cuh>
#include <limits>
#include <mutex>

#include "../csrc/checks.h"
#include "../csrc/philox.h"
#include "common.cuh"

namespace edlm::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

struct ImportanceResampleArgs {
  const float* log_weights;  // [B, K]
  int64_t* index;            // [B, S]
  float* ess;                // [B]
  int64_t B, K, S;
  at::PhiloxCudaState philox;
};

__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    importance_resample_kernel(const ImportanceResampleArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= a.B) return;  // whole warps
  const int64_t K = a.K, S = a.S;
  const float* row = a.log_weights + b * K;
  const int64_t chunk = (K + 31) / 32;
  const int64_t lo = min(K, lane * chunk), hi = min(K, lo + chunk);

  float m = -kInf;
  int64_t bad = -1;  // first NaN or +inf of the chunk
  for (int64_t k = lo; k < hi; ++k) {
    const float v = row[k];
    if (bad < 0 && !(v < kInf)) bad = k;
    m = fmaxf(m, v);
  }
  const unsigned bad_lanes = __ballot_sync(kFullMask, bad >= 0);
  if (bad_lanes) {
    if (lane == __ffs(bad_lanes) - 1) {
      EDLM_DEVICE_CHECK(
          false, "importance_resample: log_weights[%lld, %lld] = %f (NaN and +inf are not weights)",
          (long long)b, (long long)bad, row[bad]);
    }
    return;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, o));
  if (m == -kInf) {
    if (lane == 0) {
      EDLM_DEVICE_CHECK(false,
                        "importance_resample: log_weights[%lld] is -inf for every candidate: no "
                        "candidate can be drawn",
                        (long long)b);
    }
    return;
  }
  const double row_max = m;

  double sum = 0.0, sq = 0.0;
  for (int64_t k = lo; k < hi; ++k) {
    const double w = exp(static_cast<double>(row[k]) - row_max);
    sum += w;
    sq += w * w;
  }
  const double incl = warp_inclusive_sum(sum, lane);
  const double total = __shfl_sync(kFullMask, incl, 31);
  double excl = __shfl_up_sync(kFullMask, incl, 1);
  if (lane == 0) excl = 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(kFullMask, sq, o);
  if (lane == 0) a.ess[b] = static_cast<float>(total * total / sq);
  const unsigned positive = __ballot_sync(kFullMask, sum > 0.0);  // never 0: holds the max

  const auto seeds = at::cuda::philox::unpack(a.philox);
  const uint64_t key = call_key(std::get<0>(seeds), std::get<1>(seeds));
  const uint32_t b_lo = static_cast<uint32_t>(b),
                 b_hi = static_cast<uint32_t>(static_cast<uint64_t>(b) >> 32);
  for (int64_t base = 0; base < S; base += 32) {  // lane draws j = base + lane
    const int64_t j = base + lane;
    double target = 0.0;
    if (j < S) {
      const Philox4 u = philox4x32_10(static_cast<uint32_t>(j), b_lo, b_hi, kResampleStream, key);
      target = uniform53(u.w[0], u.w[1]) * total;
    }
    // Chunk: the first with positive mass whose cumulative mass exceeds the target.
    int c = -1;
#pragma unroll 4
    for (int src = 0; src < 32; ++src) {
      const double cum = __shfl_sync(kFullMask, incl, src);
      if (c < 0 && ((positive >> src) & 1u) && cum > target) c = src;
    }
    if (c < 0) c = 31 - __clz(positive);  // u * total rounded up to total
    const double start = __shfl_sync(kFullMask, excl, c);
    if (j < S) {
      const int64_t clo = min(K, c * chunk), chi = min(K, clo + chunk);
      double cum = start;
      int64_t pick = -1, last = -1;
      for (int64_t k = clo; k < chi; ++k) {
        const double w = exp(static_cast<double>(row[k]) - row_max);
        if (w > 0.0) {
          last = k;
          cum += w;
          if (cum > target) {
            pick = k;
            break;
          }
        }
      }
      a.index[b * S + j] = pick >= 0 ? pick : last;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> importance_resample_cuda(
    const at::Tensor& log_weights_in, int64_t num_samples, std::optional<at::Generator> generator) {
  constexpr const char* op = "importance_resample";
  check_importance_resample(log_weights_in, num_samples);
  TORCH_CHECK(log_weights_in.is_cuda(), op, ": expected CUDA tensors, got ",
              log_weights_in.device());
  const c10::cuda::CUDAGuard guard(log_weights_in.device());
  const at::Tensor log_weights = log_weights_in.contiguous();
  const int64_t B = log_weights.size(0), K = log_weights.size(1), S = num_samples;

  at::PhiloxCudaState philox;
  {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    philox = gen->philox_cuda_state(4);  // one call key per call: draws are keyed by coordinates
  }

  at::Tensor index = at::empty({B, S}, log_weights.options().dtype(at::kLong));
  at::Tensor ess = at::empty({B}, log_weights.options());
  if (B == 0) return {index, ess};
  const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": B = ", B, " is too large");

  ImportanceResampleArgs a{};
  a.log_weights = log_weights.data_ptr<float>();
  a.index = index.data_ptr<int64_t>();
  a.ess = ess.data_ptr<float>();
  a.B = B;
  a.K = K;
  a.S = S;
  a.philox = philox;
  importance_resample_kernel<<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0,
                               at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {index, ess};
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CUDA, m) { m.impl("importance_resample", &importance_resample_cuda); }

}  // namespace edlm::cuda
