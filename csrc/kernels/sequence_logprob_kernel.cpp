// CPU kernel of edlm::sequence_logprob, compiled once per instruction set (see kernels.h).
// One read of each weighted row: blockwise log-sum-exp (fp32 lanes inside a block of 2048, fp64
// across blocks), then the chosen token's log-probability times its weight. Rows with weight
// 0 are never read, so carry-over positions cost nothing.
#include <ATen/Parallel.h>

#include <memory>

#include "vec_common.h"

namespace edlm::cpu::CPU_CAPABILITY {

namespace {

constexpr int64_t kBlock = 2048;

template <typename T>
void sequence_logprob_impl(const T* logits, const SequenceLogprobParams& p) {
  const int64_t V = p.V;
  const int64_t nb = (V + kBlock - 1) / kBlock;
  at::parallel_for(0, p.N * p.L, 1, [&](int64_t begin, int64_t end) {
    auto ref = std::make_unique<float[]>(nb);
    auto max = std::make_unique<float[]>(nb);
    auto sum = std::make_unique<double[]>(nb);
    for (int64_t pos = begin; pos < end; ++pos) {
      const double w = p.weight[pos];
      if (w == 0.0) {
        p.terms[pos] = 0.0;
        continue;
      }
      const T* row = logits + (pos / p.L) * p.stride_n + (pos % p.L) * p.stride_l;
      const bool ok = stream_row(
          row, nb, [&](int64_t c) { return std::pair{c * kBlock, std::min(V, (c + 1) * kBlock)}; },
          1.f, ref.get(), max.get(), sum.get());
      if (!ok) {
        p.terms[pos] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      const double row_max = *std::max_element(max.get(), max.get() + nb);
      double total = 0.0;
      for (int64_t c = 0; c < nb; ++c) {
        if (sum[c] > 0.0) total += sum[c] * std::exp(static_cast<double>(ref[c]) - row_max);
      }
      const double lse = row_max + std::log(total);
      const double x = static_cast<float>(row[p.tokens[pos]]);
      p.terms[pos] = w * (x - lse);
    }
  });
}

}  // namespace

void sequence_logprob(const SequenceLogprobParams& p) {
  with_logits_type(p.dtype, p.logits, [&](auto* logits) { sequence_logprob_impl(logits, p); });
}

}  // namespace edlm::cpu::CPU_CAPABILITY
