// Parameters and entry points of the vectorized CPU kernels. Each kernel file under csrc/kernels/
// is compiled once per instruction set (DEFAULT, AVX2, AVX512) into namespace edlm::cpu::<ISA>, and
// csrc/cpu_capability.cpp picks one at run time, as ATen's DispatchStub does.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

namespace edlm::cpu {

enum class LogitsType { kFloat, kBFloat16, kHalf };

// First failure seen by a kernel thread; the host turns it into an error naming the op. Kernel
// files never throw, so that no c10 formatting code is instantiated per instruction set.
struct KernelStatus {
  enum Code : int { kOk = 0, kNonFinite = 1, kAllNegInf = 2 };
  std::atomic<int> code{kOk};
  std::atomic<int64_t> where{-1};  // flat [B*L] position of the failure
  void fail(int c, int64_t pos) {
    int expected = kOk;
    if (code.compare_exchange_strong(expected, c)) where.store(pos);
  }
};

struct MaskedSampleParams {
  const void* logits;  // [B, L, V], unit column stride
  LogitsType dtype;
  int64_t B, L, V, K;
  int64_t stride_b, stride_l;  // logits strides, in elements
  const int64_t* xt;           // [B, L]
  const int64_t* masked;       // flat b * L + l of every masked position, ascending
  int64_t num_masked;
  const int64_t* block_begin;  // [num_blocks] column blocks [begin, end) that tile the
  const int64_t* block_end;    //   vocabulary without the mask column
  int64_t num_blocks;
  int64_t max_block;  // longest block
  float inv_temperature;
  double top_p;   // nucleus mass in (0, 1]; 1 = off
  int64_t top_k;  // 0 = off (the host sets it to 0 when it keeps every real token)
  uint64_t key;
  int64_t* tokens;  // [B, K, L]
  float* logp;      // [B, K, L]
  KernelStatus* status;
};

struct SequenceLogprobParams {
  const void* logits;  // [N, L, V], unit column stride
  LogitsType dtype;
  int64_t N, L, V;
  int64_t stride_n, stride_l;  // logits strides, in elements
  const int64_t* tokens;       // [N, L]
  const double* weight;        // [N, L]
  double* terms;  // [N, L] out: weight * log_softmax(logits)[token]; 0 where weight == 0
};

#define EDLM_DECLARE_CPU_KERNELS(ISA)                        \
  namespace ISA {                                            \
  void masked_sample(const MaskedSampleParams& p);           \
  void masked_sample_truncated(const MaskedSampleParams& p); \
  void sequence_logprob(const SequenceLogprobParams& p);     \
  void exp_array(const float* x, int64_t n, float* out);     \
  const char* name();                                        \
  }

EDLM_DECLARE_CPU_KERNELS(DEFAULT)
EDLM_DECLARE_CPU_KERNELS(AVX2)
EDLM_DECLARE_CPU_KERNELS(AVX512)
#undef EDLM_DECLARE_CPU_KERNELS

// The instruction set the kernels run with: the widest of "avx512" (AVX-512 F, BW, VL and DQ, with
// AVX2, FMA and F16C), "avx2" (AVX2, FMA, F16C) and "default" that the CPU has; the environment
// variable EDLM_CPU_CAPABILITY=default|avx2|avx512 overrides (read at every call).
enum class Isa { kDefault, kAvx2, kAvx512 };
Isa active_isa();
const char* isa_name(Isa isa);
std::vector<Isa> supported_isas();  // what this CPU can run, narrowest first

#define EDLM_DISPATCH(fn, ...)         \
  switch (active_isa()) {              \
    case Isa::kAvx512:                 \
      return AVX512::fn(__VA_ARGS__);  \
    case Isa::kAvx2:                   \
      return AVX2::fn(__VA_ARGS__);    \
    default:                           \
      return DEFAULT::fn(__VA_ARGS__); \
  }

inline void masked_sample_dispatch(const MaskedSampleParams& p) { EDLM_DISPATCH(masked_sample, p); }
inline void exp_array_dispatch(const float* x, int64_t n, float* out) {
  EDLM_DISPATCH(exp_array, x, n, out);
}
inline void sequence_logprob_dispatch(const SequenceLogprobParams& p) {
  EDLM_DISPATCH(sequence_logprob, p);
}
#undef EDLM_DISPATCH

}  // namespace edlm::cpu
