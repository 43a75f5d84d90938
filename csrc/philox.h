// Counter-based random numbers for the edlm kernels: Philox4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011), shared by the CPU and CUDA kernels so both key draws
// alike. A draw is a pure function of (key, counter): no state, so a row's draws never depend on
// the batch.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EDLM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EDLM_HOST_DEVICE inline
#endif

namespace edlm {

struct Philox4 {
  uint32_t w[4];
};

EDLM_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                       uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The key of one op call: the generator's (seed, offset) mixed into one 64-bit Philox key. The CPU
// draws `seed` from its generator and uses offset 0; CUDA uses the Philox (seed, offset) pair.
EDLM_HOST_DEVICE uint64_t call_key(uint64_t seed, uint64_t offset) {
  const Philox4 r =
      philox4x32_10(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                    0x45444C4Du /* "EDLM" */, 0u, seed);
  return (static_cast<uint64_t>(r.w[1]) << 32) | r.w[0];
}

// A uniform double in [0, 1) with 53 random bits from two 32-bit words.
EDLM_HOST_DEVICE double uniform53(uint32_t hi, uint32_t lo) {
  const uint64_t bits = ((static_cast<uint64_t>(hi) << 32) | lo) >> 11;
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

// Philox streams: the fourth counter word says what a draw is for. Stream 0 was masked_sample's
// reveal draw (reveal_prob, since removed); it stays unused so that the token and resample draws
// keep their counters, and with them their outputs for a given seed.
enum Stream : uint32_t {
  kTokenStream = 1,     // masked_sample: which token (two uniforms: block, then within block)
  kResampleStream = 2,  // importance_resample: which candidate
};

}  // namespace edlm
