// CPU kernel of edlm::masked_sample, compiled once per instruction set (see kernels.h).
// Exact inverse-CDF sampling from softmax(logits / T) without the mask column: one read of the row
// gives per-block masses; each draw picks a block by its mass, then a token inside it,
// both with 53-bit uniforms, so tokens far below 2^-24 of the top one are drawn at their true rate
// (EDLM.md trap 6) and K draws cost one pass plus K short block scans.
// With top_k / top_p the op runs masked_sample_truncated_kernel.cpp instead.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "../philox.h"
#include "masked_sample_common.h"

namespace edlm::cpu::CPU_CAPABILITY {

const char* name() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

namespace {

template <typename T>
void masked_sample_impl(const T* logits, const MaskedSampleParams& p) {
  const int64_t L = p.L, K = p.K, nb = p.num_blocks;
  at::parallel_for(0, p.num_masked, 1, [&](int64_t begin, int64_t end) {
    auto buf = std::make_unique<float[]>(p.max_block + kLanes);
    auto block_ref = std::make_unique<float[]>(nb);  // reference each block was scaled by
    auto block_max_ = std::make_unique<float[]>(nb);
    auto block_s = std::make_unique<double[]>(nb);  // sum of exp((x - block_ref) / T) in the block
    auto prefix = std::make_unique<double[]>(nb);   // cumulative block masses relative to the max
    for (int64_t j = begin; j < end; ++j) {
      const int64_t pos = p.masked[j], b = pos / L, l = pos % L;
      const T* row = logits + b * p.stride_b + l * p.stride_l;

      // One read of the row: per-block references, maxima and fp32-lane masses.
      const bool ok = stream_row(
          row, nb, [&](int64_t c) { return std::pair{p.block_begin[c], p.block_end[c]}; },
          p.inv_temperature, block_ref.get(), block_max_.get(), block_s.get());
      const float row_max = checked_row_max(ok, block_max_.get(), nb, pos, p);
      if (std::isnan(row_max)) continue;
      double total = 0.0;
      int64_t last_block = 0;
      for (int64_t c = 0; c < nb; ++c) {
        if (block_s[c] > 0.0) {
          total += block_s[c] * std::exp((static_cast<double>(block_ref[c]) - row_max) *
                                         static_cast<double>(p.inv_temperature));
          last_block = c;
        }
        prefix[c] = total;
      }
      const double log_total = std::log(total);

      for (int64_t k = 0; k < K; ++k) {
        const Philox4 u = philox4x32_10(static_cast<uint32_t>(l), static_cast<uint32_t>(k),
                                        static_cast<uint32_t>(b), kTokenStream, p.key);
        const int64_t c = pick_block(prefix.get(), nb, last_block, uniform53(u.w[0], u.w[1]));
        const int64_t lo = p.block_begin[c], n = p.block_end[c] - lo;
        block_exp(row + lo, n, block_ref[c], p.inv_temperature, buf.get());
        const int64_t token = lo + inverse_cdf(buf.get(), n, uniform53(u.w[2], u.w[3]));
        const double x = static_cast<float>(row[token]);
        p.tokens[(b * K + k) * L + l] = token;
        p.logp[(b * K + k) * L + l] =
            static_cast<float>((x - row_max) * static_cast<double>(p.inv_temperature) - log_total);
      }
    }
  });
}

}  // namespace

void masked_sample(const MaskedSampleParams& p) {
  if (p.top_k > 0 || p.top_p < 1.0) return masked_sample_truncated(p);
  with_logits_type(p.dtype, p.logits, [&](auto* logits) { masked_sample_impl(logits, p); });
}

}  // namespace edlm::cpu::CPU_CAPABILITY
