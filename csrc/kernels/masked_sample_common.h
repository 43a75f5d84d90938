// Pieces of the two-level exact inverse CDF shared by the plain and truncated masked_sample
// kernels (masked_sample_kernel.cpp, masked_sample_truncated_kernel.cpp), per instruction set.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "vec_common.h"

namespace edlm::cpu::CPU_CAPABILITY {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Block of a draw: the first whose cumulative mass (prefix, inclusive) exceeds u * total;
// zero-mass blocks never are, and u * total rounded up to total falls to the last positive one.
inline int64_t pick_block(const double* prefix, int64_t nb, int64_t last_block, double u) {
  const int64_t c = std::upper_bound(prefix, prefix + nb, u * prefix[nb - 1]) - prefix;
  return c >= nb ? last_block : c;
}

// Token inside a block of weights w[0, n): exact inverse CDF at u, normalized in fp64. Whole
// chunks of 8 are skipped by their fp64 sums (independent, so they pipeline) and only the chunk
// that crosses the target is walked token by token: a K-draw call rescans K blocks, and this walk
// was its serial part.
inline int64_t inverse_cdf(const float* w, int64_t n, double u) {
  const double target = u * sum_double(w, n);
  double cum = 0.0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const double s =
        ((static_cast<double>(w[i]) + w[i + 1]) + (static_cast<double>(w[i + 2]) + w[i + 3])) +
        ((static_cast<double>(w[i + 4]) + w[i + 5]) + (static_cast<double>(w[i + 6]) + w[i + 7]));
    if (cum + s > target) break;
    cum += s;
  }
  for (; i < n; ++i) {
    cum += w[i];
    if (cum > target) return i;
  }
  // u * total rounded up to the total: the last token with positive weight.
  for (int64_t j = n - 1; j > 0; --j) {
    if (w[j] > 0.f) return j;
  }
  return 0;
}

// The row's max over its block maxima, or NaN after recording why nothing can be drawn from it
// (ok = false: NaN or +inf in the row).
inline float checked_row_max(bool ok, const float* block_max, int64_t nb, int64_t pos,
                             const MaskedSampleParams& p) {
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  if (!ok) {
    p.status->fail(KernelStatus::kNonFinite, pos);
    return kNaN;
  }
  const float m = *std::max_element(block_max, block_max + nb);
  if (m == kNegInf) {
    p.status->fail(KernelStatus::kAllNegInf, pos);
    return kNaN;
  }
  return m;
}

}  // namespace edlm::cpu::CPU_CAPABILITY
