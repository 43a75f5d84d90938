// edlm::masked_sample on the CPU: value checks, the generator draw, the block layout of the
// vocabulary, and the call into the vectorized kernel (csrc/kernels/masked_sample_kernel.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cpu_generator.h"
#include "philox.h"

namespace edlm {

namespace {

// Vocabulary block of the two-level inverse CDF: long enough that the per-block work amortizes,
// short enough that a draw's rescan of one block stays cheap and in L1.
constexpr int64_t kSampleBlock = 512;

std::tuple<at::Tensor, at::Tensor> masked_sample_cpu(const at::Tensor& logits_in,
                                                     const at::Tensor& xt_in, int64_t mask_id,
                                                     int64_t num_samples, double temperature,
                                                     double top_p, int64_t top_k,
                                                     std::optional<at::Generator> generator) {
  constexpr const char* op = "masked_sample";
  check_masked_sample(logits_in, xt_in, mask_id, num_samples, temperature, top_p, top_k);
  TORCH_CHECK(logits_in.device().is_cpu(), op, ": expected CPU tensors, got ", logits_in.device());
  const at::Tensor logits = unit_column_stride(logits_in);  // rows read in place
  const at::Tensor xt = xt_in.contiguous();
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2), K = num_samples;

  // Ids in range; the masked positions, in order.
  const int64_t* x = xt.data_ptr<int64_t>();
  std::vector<int64_t> masked;
  for (int64_t i = 0; i < B * L; ++i) {
    TORCH_CHECK(x[i] >= 0 && x[i] < V, op, ": xt[", i / L, ", ", i % L, "] = ", x[i],
                " is outside [0, V) with V = ", V);
    if (x[i] == mask_id) masked.push_back(i);
  }

  // Blocks tiling [0, V) without the mask column.
  std::vector<int64_t> block_begin, block_end;
  for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, mask_id}, {mask_id + 1, V}}) {
    for (int64_t s = lo; s < hi; s += kSampleBlock) {
      block_begin.push_back(s);
      block_end.push_back(std::min(s + kSampleBlock, hi));
    }
  }

  const uint64_t key = cpu_call_key(generator);
  // A fresh tensor: for K = 1, expand(...).contiguous() would alias xt.
  at::Tensor tokens = at::empty({B, K, L}, xt.options());
  tokens.copy_(xt.unsqueeze(1).expand({B, K, L}));
  at::Tensor logp = at::zeros({B, K, L}, logits.options().dtype(at::kFloat));
  if (masked.empty()) return {tokens, logp};

  cpu::KernelStatus status;
  cpu::MaskedSampleParams p{};
  p.logits = logits.data_ptr();
  p.dtype = logits_type(op, logits);
  p.B = B;
  p.L = L;
  p.V = V;
  p.K = K;
  p.stride_b = logits.stride(0);
  p.stride_l = logits.stride(1);
  p.xt = x;
  p.masked = masked.data();
  p.num_masked = static_cast<int64_t>(masked.size());
  p.block_begin = block_begin.data();
  p.block_end = block_end.data();
  p.num_blocks = static_cast<int64_t>(block_begin.size());
  p.max_block = kSampleBlock;
  p.inv_temperature = static_cast<float>(1.0 / temperature);
  p.top_p = top_p;
  p.top_k = top_k < V - 1 ? top_k : 0;  // k >= the real tokens keeps them all: the plain op
  p.key = key;
  p.tokens = tokens.data_ptr<int64_t>();
  p.logp = logp.data_ptr<float>();
  p.status = &status;
  cpu::masked_sample_dispatch(p);

  const int64_t where = status.where.load();
  switch (status.code.load()) {
    case cpu::KernelStatus::kNonFinite:
      TORCH_CHECK(false, op, ": logits[", where / L, ", ", where % L,
                  "] contain NaN or +inf at a masked position");
    case cpu::KernelStatus::kAllNegInf:
      TORCH_CHECK(false, op, ": logits[", where / L, ", ", where % L,
                  "] are -inf for every token but the mask at a masked position: nothing to draw");
    default:
      break;
  }
  return {tokens, logp};
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CPU, m) { m.impl("masked_sample", &masked_sample_cpu); }

}  // namespace edlm
