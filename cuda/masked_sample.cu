// edlm::masked_sample on CUDA: one block per position, exact inverse-CDF sampling from
// softmax(logits / T) without the mask column (EDLM.md trap 6), keyed like the CPU kernel.
//
// Algorithm. A block first reads xt: an unmasked position is carried over (tokens = xt, logp = 0)
// without reading its logits. At a masked position each thread streams its segment of the row
// (16-byte loads; segment t = vectors t, t + 256, ...) once, keeping an online max m_t and the fp32
// sum s_t of exp((x - m_t) / T). A block max M and an fp64 block scan of the segment masses
// w_t = s_t exp((m_t - M) / T) give the cumulative masses. Each draw k (one warp per draw, so K
// draws run side by side) takes two 53-bit uniforms: the first picks the segment whose cumulative
// interval holds u1 * total, the second picks a token inside it by an fp64 inverse CDF over its
// fp32 exponentials (the warp rescans the segment: a lane scan, then the chosen lane rescans its
// own elements). A token 1e-9 below the top one is drawn at its true rate, and K draws cost one
// pass over the row plus K segment rescans.
//
// Truncation (top_k, top_p; see ops.py). The threshold is the largest logit t that still keeps
// k tokens (top-k), then the largest that keeps top_p of the top-k mass (top-p): a bisection over
// the ordered fp32 values, each step one pass over the row with a block-wide count and fp64 mass
// of {x >= t} (so at most 2 x 32 extra passes: simple, not fast). The segment masses are then
// recomputed over the kept tokens, and the draw treats every other token as weight 0. Off (top_p =
// 1, top_k = 0), none of this runs and the draws are the plain op's.
//
// Bad input. Shapes, dtypes, devices and scalars are checked on the host (csrc/checks.cpp) and
// raise a normal RuntimeError. The value errors (an xt id outside [0, V), NaN or +inf logits at a
// masked position, a masked position whose logits are -inf for every real token) depend on data
// that lives on the device, and raising them from the host would need a device-to-host sync in
// every call (no CUDA graphs, a stalled sampling loop). So the kernel prints the op, the position
// and the problem, then fails a CUDA_KERNEL_ASSERT: the call returns, the next synchronizing call
// raises "CUDA error: device-side assert triggered", and the CUDA context is unusable until the
// process restarts, as for any device-side assert in PyTorch. No garbage is ever returned silently.
// For a Python exception instead, run the same call on the CPU.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <ATen/cuda/PhiloxUtils.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <limits>
#include <mutex>

#include "../csrc/checks.h"
#include "../csrc/philox.h"
#include "common.cuh"

namespace edlm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct MaskedSampleArgs {
  const void* logits;  // [B, L, V], any layout with unit column stride
  const int64_t* xt;   // [B, L] contiguous
  int64_t* tokens;     // [B, K, L]
  float* logp;         // [B, K, L]
  int64_t L, K;
  int64_t stride_b, stride_l;  // logits strides, in elements
  int V, mask_id;
  float inv_t;
  double top_p;  // 1 = off
  int top_k;     // 0 = off (also when it keeps every real token)
  at::PhiloxCudaState philox;
};

// Order-preserving map of non-NaN floats to uint32 (and back): bisection over logit values.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Thread tid's segment of a row (as row_pass reads it), column by column.
template <typename D, int kThreads, typename F>
__device__ __forceinline__ void for_segment(const typename D::storage* row, const RowLayout& lay,
                                            int tid, F&& f) {
  if (tid < lay.tail) {
    const int col = lay.nv * D::kVec + tid;
    f(col, D::to_float(row[col]));
  }
  for (int v = tid; v < lay.nv; v += kThreads) {
    float xs[D::kVec];
    load_cols<D>(row, lay, v, xs);
#pragma unroll
    for (int j = 0; j < D::kVec; ++j) f(v * D::kVec + j, xs[j]);
  }
}

template <typename D>
__global__ void __launch_bounds__(kThreads, 4) masked_sample_kernel(const MaskedSampleArgs a) {
  using S = typename D::storage;
  constexpr int kVec = D::kVec;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t pos = blockIdx.x, b = pos / a.L, l = pos % a.L, K = a.K, L = a.L;
  const int64_t x = a.xt[pos];
  if (tid == 0) {
    EDLM_DEVICE_CHECK(x >= 0 && x < a.V,
                      "masked_sample: xt[%lld, %lld] = %lld is outside [0, V) with V = %d",
                      (long long)b, (long long)l, (long long)x, a.V);
  }
  if (x != a.mask_id) {  // carry-over (or a bad id, asserted above)
    for (int64_t k = tid; k < K; k += kThreads) {
      a.tokens[(b * K + k) * L + l] = x;
      a.logp[(b * K + k) * L + l] = 0.f;
    }
    return;
  }

  const auto seeds = at::cuda::philox::unpack(a.philox);
  const uint64_t key = call_key(std::get<0>(seeds), std::get<1>(seeds));
  const uint32_t l32 = static_cast<uint32_t>(l), b32 = static_cast<uint32_t>(b);

  // One pass over the row: per-thread max and fp32 exp-sum against it.
  const S* row = static_cast<const S*>(a.logits) + b * a.stride_b + l * a.stride_l;
  const RowLayout lay = row_layout<D>(row, a.V);
  const float scale = a.inv_t * kLog2e;  // exp(y / T) = exp2f(y * scale)
  const OnlineSum acc = row_pass<D, kThreads>(row, lay, a.mask_id, scale, tid);
  if (__syncthreads_or(acc.invalid())) {
    if (tid == 0) {
      EDLM_DEVICE_CHECK(
          false, "masked_sample: logits[%lld, %lld] contain NaN or +inf at a masked position",
          (long long)b, (long long)l);
    }
    return;
  }

  using BlockReduceF = cub::BlockReduce<float, kThreads>;
  using BlockReduceI = cub::BlockReduce<int, kThreads>;
  using BlockScanD = cub::BlockScan<double, kThreads>;
  using BlockReduceD = cub::BlockReduce<double, kThreads>;
  __shared__ union {
    typename BlockReduceF::TempStorage reduce_f;
    typename BlockReduceI::TempStorage reduce_i;
    typename BlockScanD::TempStorage scan_d;
    typename BlockReduceD::TempStorage reduce_d;
  } tmp;
  __shared__ double prefix[kThreads];  // inclusive cumulative segment masses
  __shared__ float seg_max[kThreads];
  __shared__ bool seg_positive[kThreads];
  __shared__ float row_max_sh;
  __shared__ int last_positive_sh;

  const float row_max_t0 = BlockReduceF(tmp.reduce_f).Reduce(acc.m, MaxOp{});
  if (tid == 0) row_max_sh = row_max_t0;
  __syncthreads();
  const float row_max = row_max_sh;
  if (row_max == -kInf) {
    if (tid == 0) {
      EDLM_DEVICE_CHECK(
          false,
          "masked_sample: logits[%lld, %lld] are -inf for every token but the mask at a "
          "masked position: nothing to draw",
          (long long)b, (long long)l);
    }
    return;
  }
  // Truncation threshold: every token with a logit below it has weight 0 (-inf: none).
  float threshold = -kInf;
  const bool truncate = a.top_k > 0 || a.top_p < 1.0;
  if (truncate) {
    __shared__ int count_sh;
    __shared__ double mass_sh;
    // Count and fp64 mass (relative to the row max) of the real tokens with logits >= t.
    auto at_least = [&](float t, int& count, double& mass) {
      int n = 0;
      double m = 0.0;
      for_segment<D, kThreads>(row, lay, tid, [&](int col, float xv) {
        if (col != a.mask_id && xv >= t) {
          ++n;
          m += exp2f((xv - row_max) * scale);
        }
      });
      const int n0 = BlockReduceI(tmp.reduce_i).Sum(n);
      __syncthreads();
      const double m0 = BlockReduceD(tmp.reduce_d).Sum(m);
      if (tid == 0) count_sh = n0, mass_sh = m0;
      __syncthreads();
      count = count_sh, mass = mass_sh;
      __syncthreads();  // everyone has read the shared results before the next call writes them
    };
    // The largest value in [lo, hi] (as order keys) where pred holds; pred(lo) must hold.
    auto largest = [&](float lo_f, float hi_f, auto&& pred) {
      uint32_t lo = order_key(lo_f), hi = order_key(hi_f);
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        if (pred(key_float(mid))) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      return key_float(lo);
    };
    int count;
    double mass;
    if (a.top_k > 0) {
      threshold = largest(-kInf, row_max, [&](float t) {
        at_least(t, count, mass);
        return count >= a.top_k;
      });
    }
    if (a.top_p < 1.0) {
      at_least(threshold, count, mass);
      const double target = a.top_p * mass;
      threshold = largest(threshold, row_max, [&](float t) {
        at_least(t, count, mass);
        return mass >= target;
      });
    }
  }
  double w = acc.s > 0.f ? static_cast<double>(acc.s) * exp((static_cast<double>(acc.m) - row_max) *
                                                            static_cast<double>(a.inv_t))
                         : 0.0;
  if (truncate) {  // the segment's mass over its kept tokens only
    float s_kept = 0.f;
    if (acc.m >= threshold) {
      for_segment<D, kThreads>(row, lay, tid, [&](int col, float xv) {
        if (col != a.mask_id && xv >= threshold) s_kept += exp2f((xv - acc.m) * scale);
      });
    }
    w = s_kept > 0.f ? static_cast<double>(s_kept) * exp((static_cast<double>(acc.m) - row_max) *
                                                         static_cast<double>(a.inv_t))
                     : 0.0;
  }
  double incl, total;
  BlockScanD(tmp.scan_d).InclusiveSum(w, incl, total);
  prefix[tid] = incl;
  seg_max[tid] = acc.m;
  seg_positive[tid] = w > 0.0;
  __syncthreads();
  const int last_positive_t0 = BlockReduceI(tmp.reduce_i).Reduce(w > 0.0 ? tid : -1, MaxOp{});
  if (tid == 0) last_positive_sh = last_positive_t0;
  __syncthreads();
  const double log_total = log(total);

  // Draws: warp `warp` takes k = warp, warp + kWarps, ...
  for (int64_t k = warp; k < K; k += kWarps) {
    const uint32_t k32 = static_cast<uint32_t>(k);
    const Philox4 u = philox4x32_10(l32, k32, b32, kTokenStream, key);

    // Segment: the first with positive mass whose cumulative mass exceeds u1 * total.
    const double target = uniform53(u.w[0], u.w[1]) * total;
    int c = -1;
    for (int base = 0; base < kThreads; base += 32) {
      const int t = base + lane;
      const unsigned hit = __ballot_sync(kFullMask, seg_positive[t] && prefix[t] > target);
      if (hit) {
        c = base + __ffs(hit) - 1;
        break;
      }
    }
    if (c < 0) c = last_positive_sh;  // u1 * total rounded up to total

    // Token inside segment c: lane i takes vectors c + (i + 32 r) * kThreads, lane 0 also the
    // tail element; the same visit order both times.
    const float mc = seg_max[c];
    auto visit = [&](auto&& f) {
      if (lane == 0 && c < lay.tail) {
        const int col = lay.nv * kVec + c;
        f(col, D::to_float(row[col]));
      }
      for (int v = c + lane * kThreads; v < lay.nv; v += 32 * kThreads) {
        float xs[kVec];
        load_cols<D>(row, lay, v, xs);
#pragma unroll
        for (int j = 0; j < kVec; ++j) f(v * kVec + j, xs[j]);
      }
    };
    auto weight = [&](int col, float xv) {
      return col == a.mask_id || xv < threshold ? 0.f : exp2f((xv - mc) * scale);
    };
    double lane_sum = 0.0;
    visit([&](int col, float xv) { lane_sum += weight(col, xv); });
    const double lane_incl = warp_inclusive_sum(lane_sum, lane);
    const double seg_total = __shfl_sync(kFullMask, lane_incl, 31);
    double lane_excl = __shfl_up_sync(kFullMask, lane_incl, 1);
    if (lane == 0) lane_excl = 0.0;
    const double target2 = uniform53(u.w[2], u.w[3]) * seg_total;
    const unsigned hit = __ballot_sync(kFullMask, lane_sum > 0.0 && lane_incl > target2);
    const unsigned positive = __ballot_sync(kFullMask, lane_sum > 0.0);  // never 0: holds mc itself
    const int src = hit ? __ffs(hit) - 1 : 31 - __clz(positive);
    if (lane == src) {
      double cum = lane_excl;
      int pick = -1, last = -1;
      visit([&](int col, float xv) {
        const float e = weight(col, xv);
        if (pick < 0 && e > 0.f) {
          last = col;
          cum += e;
          if (cum > target2) pick = col;
        }
      });
      if (pick < 0) pick = last;
      const double xp = D::to_float(row[pick]);
      a.tokens[(b * K + k) * L + l] = pick;
      a.logp[(b * K + k) * L + l] =
          static_cast<float>((xp - row_max) * static_cast<double>(a.inv_t) - log_total);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> masked_sample_cuda(const at::Tensor& logits_in,
                                                      const at::Tensor& xt_in, int64_t mask_id,
                                                      int64_t num_samples, double temperature,
                                                      double top_p, int64_t top_k,
                                                      std::optional<at::Generator> generator) {
  constexpr const char* op = "masked_sample";
  check_masked_sample(logits_in, xt_in, mask_id, num_samples, temperature, top_p, top_k);
  TORCH_CHECK(logits_in.is_cuda(), op, ": expected CUDA tensors, got ", logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  // Rows are read in place wherever their columns are adjacent (row_layout handles any address).
  const at::Tensor logits = unit_column_stride(logits_in);
  const at::Tensor xt = xt_in.contiguous();
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2), K = num_samples;
  TORCH_CHECK(V <= std::numeric_limits<int>::max(), op, ": V must be below 2^31, got ", V);
  TORCH_CHECK(B * L <= std::numeric_limits<int>::max(), op,
              ": B * L must be below 2^31 on CUDA (one block per position), got ", B * L);

  at::PhiloxCudaState philox;
  {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    philox = gen->philox_cuda_state(4);  // one call key per call: draws are keyed by coordinates
  }

  at::Tensor tokens = at::empty({B, K, L}, xt.options());
  at::Tensor logp = at::empty({B, K, L}, logits.options().dtype(at::kFloat));
  if (B * L == 0) return {tokens, logp};

  MaskedSampleArgs a{};
  a.logits = logits.data_ptr();
  a.xt = xt.data_ptr<int64_t>();
  a.tokens = tokens.data_ptr<int64_t>();
  a.logp = logp.data_ptr<float>();
  a.L = L;
  a.K = K;
  a.stride_b = logits.stride(0);
  a.stride_l = logits.stride(1);
  a.V = static_cast<int>(V);
  a.mask_id = static_cast<int>(mask_id);
  a.inv_t = static_cast<float>(1.0 / temperature);
  a.top_p = top_p;
  a.top_k = top_k < V - 1 ? static_cast<int>(top_k) : 0;  // k >= the real tokens: off
  a.philox = philox;

  const dim3 grid(static_cast<unsigned>(B * L));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (logits_type(op, logits)) {
    case cpu::LogitsType::kFloat:
      masked_sample_kernel<F32><<<grid, kThreads, 0, stream>>>(a);
      break;
    case cpu::LogitsType::kBFloat16:
      masked_sample_kernel<BF16><<<grid, kThreads, 0, stream>>>(a);
      break;
    case cpu::LogitsType::kHalf:
      masked_sample_kernel<F16><<<grid, kThreads, 0, stream>>>(a);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {tokens, logp};
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CUDA, m) { m.impl("masked_sample", &masked_sample_cuda); }

}  // namespace edlm::cuda
