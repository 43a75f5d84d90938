// edlm::_vec_exp on the CPU: the vectorized exp every CPU kernel uses, for tests of its accuracy.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "kernels/kernels.h"

namespace edlm {

namespace {

at::Tensor vec_exp_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "_vec_exp: expected a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "_vec_exp: expected float32, got ",
              x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  cpu::exp_array_dispatch(x.data_ptr<float>(), x.numel(), out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edlm, CPU, m) { m.impl("_vec_exp", &vec_exp_cpu); }

}  // namespace edlm
