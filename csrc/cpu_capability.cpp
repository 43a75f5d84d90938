// Run-time choice of the instruction set for the CPU kernels (see kernels/kernels.h).
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "kernels/kernels.h"

namespace edlm::cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

}  // namespace

Isa active_isa() {
  const char* env = std::getenv("EDLM_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return cpu_has_avx2() ? Isa::kAvx2 : Isa::kDefault;
  if (std::strcmp(env, "default") == 0) return Isa::kDefault;
  if (std::strcmp(env, "avx2") == 0) {
    TORCH_CHECK(cpu_has_avx2(), "EDLM_CPU_CAPABILITY=avx2, but this CPU lacks AVX2, FMA or F16C");
    return Isa::kAvx2;
  }
  TORCH_CHECK(false, "EDLM_CPU_CAPABILITY must be 'default' or 'avx2', got '", env, "'");
}

const char* isa_name(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "default"; }

}  // namespace edlm::cpu
