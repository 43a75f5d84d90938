// edlm::importance_resample on the CPU: per row, normalized importance weights in fp64, their
// effective sample size, and i.i.d. inverse-CDF draws keyed by (row, draw) with Philox.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu_generator.h"
#include "philox.h"

namespace edlm {

namespace {

std::tuple<at::Tensor, at::Tensor> importance_resample_cpu(const at::Tensor& log_weights_in,
                                                           int64_t num_samples,
                                                           std::optional<at::Generator> generator) {
  constexpr const char* op = "importance_resample";
  check_importance_resample(log_weights_in, num_samples);
  TORCH_CHECK(log_weights_in.device().is_cpu(), op, ": expected CPU tensors, got ",
              log_weights_in.device());
  const at::Tensor log_weights = log_weights_in.contiguous();
  const int64_t B = log_weights.size(0), K = log_weights.size(1), S = num_samples;

  const uint64_t key = cpu_call_key(generator);

  at::Tensor index = at::empty({B, S}, log_weights.options().dtype(at::kLong));
  at::Tensor ess = at::empty({B}, log_weights.options());
  const float* lw = log_weights.data_ptr<float>();
  int64_t* idx = index.data_ptr<int64_t>();
  float* ess_out = ess.data_ptr<float>();

  // Bad rows first, so the error names the first one whatever the thread layout.
  for (int64_t b = 0; b < B; ++b) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < K; ++k) {
      const float v = lw[b * K + k];
      TORCH_CHECK(!std::isnan(v) && v != std::numeric_limits<float>::infinity(), op,
                  ": log_weights[", b, ", ", k, "] = ", v, " (NaN and +inf are not weights)");
      m = std::max(m, v);
    }
    TORCH_CHECK(m > -std::numeric_limits<float>::infinity(), op, ": log_weights[", b,
                "] is -inf for every candidate: no candidate can be drawn");
  }

  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / K), [&](int64_t begin, int64_t end) {
    std::vector<double> prefix(K);
    for (int64_t b = begin; b < end; ++b) {
      const float* row = lw + b * K;
      const double m = *std::max_element(row, row + K);
      double total = 0.0, sq = 0.0;
      int64_t last_positive = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double w = std::exp(static_cast<double>(row[k]) - m);
        total += w;
        sq += w * w;
        prefix[k] = total;
        if (w > 0.0) last_positive = k;
      }
      ess_out[b] = static_cast<float>(total * total / sq);
      for (int64_t j = 0; j < S; ++j) {
        const Philox4 u = philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(b),
                                        static_cast<uint32_t>(static_cast<uint64_t>(b) >> 32),
                                        kResampleStream, key);
        const double target = uniform53(u.w[0], u.w[1]) * total;
        int64_t k = std::upper_bound(prefix.begin(), prefix.end(), target) - prefix.begin();
        idx[b * S + j] = k < K ? k : last_positive;
      }
    }
  });
  return {index, ess};
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CPU, m) { m.impl("importance_resample", &importance_resample_cpu); }

}  // namespace edlm
