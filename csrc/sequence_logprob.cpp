// edlm::sequence_logprob on the CPU: value checks and the call into the vectorized kernel
// (csrc/kernels/sequence_logprob_kernel.cpp); per-position terms are summed in fp64, in order.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace edlm {

namespace {

at::Tensor sequence_logprob_cpu(const at::Tensor& logits_in, const at::Tensor& tokens_in,
                                const std::optional<at::Tensor>& weight_in) {
  constexpr const char* op = "sequence_logprob";
  check_sequence_logprob(logits_in, tokens_in, weight_in);
  TORCH_CHECK(logits_in.device().is_cpu(), op, ": expected CPU tensors, got ", logits_in.device());
  const at::Tensor logits = unit_column_stride(logits_in);  // rows read in place
  const at::Tensor tokens = tokens_in.contiguous();
  const int64_t N = logits.size(0), L = logits.size(1), V = logits.size(2);
  const at::Tensor weight = weight_in.has_value()
                                ? weight_in->to(at::kDouble).contiguous()
                                : at::ones({N, L}, logits.options().dtype(at::kDouble));

  const int64_t* tok = tokens.data_ptr<int64_t>();
  const double* w = weight.data_ptr<double>();
  for (int64_t i = 0; i < N * L; ++i) {
    TORCH_CHECK(w[i] == 0.0 || (tok[i] >= 0 && tok[i] < V), op, ": tokens[", i / L, ", ", i % L,
                "] = ", tok[i], " is outside [0, V) with V = ", V);
  }

  at::Tensor terms = at::empty({N, L}, weight.options());
  cpu::SequenceLogprobParams p{};
  p.logits = logits.data_ptr();
  p.dtype = logits_type(op, logits);
  p.N = N;
  p.L = L;
  p.V = V;
  p.stride_n = logits.stride(0);
  p.stride_l = logits.stride(1);
  p.tokens = tok;
  p.weight = w;
  p.terms = terms.data_ptr<double>();
  cpu::sequence_logprob_dispatch(p);

  at::Tensor out = at::empty({N}, logits.options().dtype(at::kFloat));
  const double* t = p.terms;
  float* o = out.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    double s = 0.0;
    for (int64_t l = 0; l < L; ++l) s += t[n * L + l];
    o[n] = static_cast<float>(s);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CPU, m) { m.impl("sequence_logprob", &sequence_logprob_cpu); }

}  // namespace edlm
