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

// __builtin_cpu_supports also checks that the OS saves the registers (XGETBV) for AVX and AVX-512.
bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

}  // namespace

Isa active_isa() {
  const char* env = std::getenv("EDLM_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') {
    return cpu_has_avx512() ? Isa::kAvx512 : cpu_has_avx2() ? Isa::kAvx2 : Isa::kDefault;
  }
  if (std::strcmp(env, "default") == 0) return Isa::kDefault;
  if (std::strcmp(env, "avx2") == 0) {
    TORCH_CHECK(cpu_has_avx2(), "EDLM_CPU_CAPABILITY=avx2, but this CPU lacks AVX2, FMA or F16C");
    return Isa::kAvx2;
  }
  if (std::strcmp(env, "avx512") == 0) {
    TORCH_CHECK(cpu_has_avx512(),
                "EDLM_CPU_CAPABILITY=avx512, but this CPU lacks AVX-512 F, BW, VL or DQ (or AVX2)");
    return Isa::kAvx512;
  }
  TORCH_CHECK(false, "EDLM_CPU_CAPABILITY must be 'default', 'avx2' or 'avx512', got '", env, "'");
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out{Isa::kDefault};
  if (cpu_has_avx2()) out.push_back(Isa::kAvx2);
  if (cpu_has_avx512()) out.push_back(Isa::kAvx512);
  return out;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace edlm::cpu
