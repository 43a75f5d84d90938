// Shape, dtype and device checks for the three ops (see checks.h).
#include "checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace edlm {

namespace {

constexpr int64_t kMaxCounter = std::numeric_limits<uint32_t>::max();
constexpr float kLog2e = 1.4426950408889634f;

void check_index_tensor(const char* op, const char* name, const at::Tensor& t,
                        const at::Tensor& logits) {
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == logits.device(), op, ": ", name, " is on ", t.device(),
              " but logits are on ", logits.device());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == logits.size(0) && t.size(1) == logits.size(1), op, ": ",
              name, " must be [", logits.size(0), ", ", logits.size(1), "] to match logits ",
              logits.sizes(), ", got ", t.sizes());
}

}  // namespace

cpu::LogitsType logits_type(const char* op, const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat:
      return cpu::LogitsType::kFloat;
    case at::kBFloat16:
      return cpu::LogitsType::kBFloat16;
    case at::kHalf:
      return cpu::LogitsType::kHalf;
    default:
      TORCH_CHECK(false, op, ": logits must be float32, bfloat16 or float16, got ",
                  logits.scalar_type());
  }
}

void check_masked_sample(const at::Tensor& logits, const at::Tensor& xt, int64_t mask_id,
                         int64_t num_samples, double temperature, double top_p, int64_t top_k) {
  constexpr const char* op = "masked_sample";
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be 3-D [B, L, V], got ", logits.sizes());
  logits_type(op, logits);
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2);
  TORCH_CHECK(V >= 2, op, ": V must be at least 2 (one real token and the mask), got ", V);
  check_index_tensor(op, "xt", xt, logits);
  TORCH_CHECK(mask_id >= 0 && mask_id < V, op, ": mask_id = ", mask_id,
              " is outside [0, V) with V = ", V);
  TORCH_CHECK(num_samples >= 1, op, ": num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK(B <= kMaxCounter && L <= kMaxCounter && num_samples <= kMaxCounter, op,
              ": B, L and num_samples must each be below 2^32, got B = ", B, ", L = ", L,
              ", num_samples = ", num_samples);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, op,
              ": temperature must be finite and > 0, got ", temperature);
  // The kernels scale by 1/T in fp32 (CPU) and by 1/T * log2(e) in fp32 (CUDA, for exp2f): both
  // must be normal floats, else -inf logits times a zero (or flushed subnormal) scale give NaN.
  const float inv_t = static_cast<float>(1.0 / temperature);
  TORCH_CHECK(std::isnormal(inv_t) && std::isnormal(inv_t * kLog2e), op,
              ": temperature = ", temperature, " is outside [",
              kLog2e / std::numeric_limits<float>::max(), ", ",
              1.0 / std::numeric_limits<float>::min(),
              "], where 1/T and 1/T * log2(e) are normal float32 numbers");
  // NaN fails both comparisons, so it is rejected too.
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, op, ": top_p must be in (0, 1] (1 = off), got ", top_p);
  TORCH_CHECK(top_k >= 0, op, ": top_k must be >= 0 (0 = off), got ", top_k);
}

void check_sequence_logprob(const at::Tensor& logits, const at::Tensor& tokens,
                            const std::optional<at::Tensor>& weight) {
  constexpr const char* op = "sequence_logprob";
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be 3-D [N, L, V], got ", logits.sizes());
  logits_type(op, logits);
  TORCH_CHECK(logits.size(2) >= 1, op, ": V must be at least 1, got ", logits.size(2));
  check_index_tensor(op, "tokens", tokens, logits);
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.scalar_type() == at::kBool || at::isFloatingType(w.scalar_type()), op,
                ": weight must be bool or floating point, got ", w.scalar_type());
    TORCH_CHECK(w.device() == logits.device(), op, ": weight is on ", w.device(),
                " but logits are on ", logits.device());
    TORCH_CHECK(w.dim() == 2 && w.size(0) == logits.size(0) && w.size(1) == logits.size(1), op,
                ": weight must be [", logits.size(0), ", ", logits.size(1), "], got ", w.sizes());
  }
}

void check_importance_resample(const at::Tensor& log_weights, int64_t num_samples) {
  constexpr const char* op = "importance_resample";
  TORCH_CHECK(log_weights.dim() == 2, op, ": log_weights must be 2-D [B, K], got ",
              log_weights.sizes());
  TORCH_CHECK(log_weights.scalar_type() == at::kFloat, op, ": log_weights must be float32, got ",
              log_weights.scalar_type());
  TORCH_CHECK(log_weights.size(1) >= 1, op,
              ": log_weights needs at least one candidate (K >= 1), got ", log_weights.sizes());
  TORCH_CHECK(num_samples >= 1, op, ": num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK(num_samples <= kMaxCounter, op, ": num_samples must be below 2^32, got ",
              num_samples);
}

at::Tensor unit_column_stride(const at::Tensor& logits) {
  return logits.size(-1) <= 1 || logits.stride(-1) == 1 ? logits : logits.contiguous();
}

}  // namespace edlm
