// The edlm operator library: every schema in one place (device kernels register in their own
// files with TORCH_LIBRARY_IMPL), plus the Python module edlm._C that loads them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "philox.h"

TORCH_LIBRARY(edlm, m) {
  m.def(
      "masked_sample(Tensor logits, Tensor xt, int mask_id, *, int num_samples=1, "
      "float temperature=1.0, float top_p=1.0, int top_k=0, Generator? generator=None) -> (Tensor "
      "tokens, Tensor logp)",
      {at::Tag::nondeterministic_seeded});
  m.def("sequence_logprob(Tensor logits, Tensor tokens, Tensor? weight=None) -> Tensor");
  m.def(
      "importance_resample(Tensor log_weights, *, int num_samples=1, Generator? generator=None) "
      "-> (Tensor index, Tensor ess)",
      {at::Tag::nondeterministic_seeded});
  // The kernels' vectorized exp applied elementwise (CPU, float32), so that tests can sweep it.
  m.def("_vec_exp(Tensor x) -> Tensor");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "edlm's compiled ops; importing it registers torch.ops.edlm.*";
  module.def(
      "cpu_capability", [] { return std::string(edlm::cpu::isa_name(edlm::cpu::active_isa())); },
      "The instruction set the CPU kernels use now ('avx512', 'avx2' or 'default').");
  module.def(
      "cpu_capabilities",
      [] {
        std::vector<std::string> names;
        for (const auto isa : edlm::cpu::supported_isas())
          names.emplace_back(edlm::cpu::isa_name(isa));
        return names;
      },
      "Every instruction set the CPU kernels can use on this CPU, narrowest first.");
  module.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> counter, uint64_t key) {
        const edlm::Philox4 r =
            edlm::philox4x32_10(counter[0], counter[1], counter[2], counter[3], key);
        return std::array<uint32_t, 4>{r.w[0], r.w[1], r.w[2], r.w[3]};
      },
      "Philox4x32-10 of one counter under a 64-bit key (for tests against known answers).");
  module.def(
      "has_cuda",
      [] {
#if defined(EDLM_WITH_CUDA)
        return true;
#else
        return false;
#endif
      },
      "Whether this build has the CUDA kernels.");
}
