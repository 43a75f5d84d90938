// The kernels' exponential (vec_common.h's exp_fast) over an array, compiled once per instruction
// set like the kernels that inline it, so that tests measure exactly what they compute.
#include <ATen/Parallel.h>

#include "vec_common.h"

namespace edlm::cpu::CPU_CAPABILITY {

void exp_array(const float* x, int64_t n, float* out) {
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    exp_fast_array(x + begin, end - begin, out + begin);
  });
}

}  // namespace edlm::cpu::CPU_CAPABILITY
