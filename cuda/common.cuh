// Device building blocks shared by the CUDA kernels of edlm (cuda/*.cu): logits element types,
// 16-byte row loads, the one-pass online softmax of a thread's share of a row, and the device-side
// value check. The CUDA counterpart of csrc/kernels/vec_common.h.
#pragma once

#include <c10/macros/Macros.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdio>

namespace edlm::cuda {

constexpr float kInf = __builtin_huge_valf();
constexpr unsigned kFullMask = 0xffffffffu;

// Logits element types: the storage type, elements per 16-byte vector, and the conversion.
struct F32 {
  using storage = float;
  static constexpr int kVec = 4;
  static __device__ __forceinline__ float to_float(float x) { return x; }
};
struct BF16 {
  using storage = uint16_t;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_float(uint16_t x) {
    return __uint_as_float(static_cast<uint32_t>(x) << 16);
  }
};
struct F16 {
  using storage = uint16_t;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_float(uint16_t x) {
    return __half2float(__ushort_as_half(x));
  }
};

// Four 32-bit words (16 bytes of logits) as kVec floats in x[0, kVec).
template <typename D>
__device__ __forceinline__ void words_to_floats(const uint32_t (&w)[4], float* x) {
  if constexpr (D::kVec == 4) {
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = __uint_as_float(w[j]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      x[2 * j] = D::to_float(static_cast<uint16_t>(w[j] & 0xffffu));
      x[2 * j + 1] = D::to_float(static_cast<uint16_t>(w[j] >> 16));
    }
  }
}

// A row of V elements split by column alone, whatever its address: vector v holds columns
// [v * kVec, (v + 1) * kVec) for v < nv = V / kVec, then `tail` = V % kVec scalar columns. So which
// thread sums which columns (and hence every fp32 rounding and every draw) is the same for the same
// row at any 16-byte phase (a storage-offset view, an odd row stride or V). `shift` is the row's
// byte offset inside its 16-byte word; it only chooses how a vector is loaded (load_cols).
struct RowLayout {
  int nv;
  int tail;
  int shift;
};

template <typename D>
__device__ __forceinline__ RowLayout row_layout(const typename D::storage* row, int V) {
  const int nv = V / D::kVec;
  return RowLayout{nv, V - nv * D::kVec, static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15u)};
}

// Vector v of a row (columns [v * kVec, (v + 1) * kVec)) as kVec floats in x[0, kVec), inlined with
// constant offsets so x stays in registers. An aligned row takes one 16-byte load; otherwise the
// two aligned 16-byte words around the vector are loaded (the second is mostly an L1 hit: the next
// thread loads it as its first) and shifted into place, by whole words with selects (a run-time
// index into w would put it in local memory), then by the remaining bytes with funnel shifts.
template <typename D>
__device__ __forceinline__ void load_cols(const typename D::storage* row, const RowLayout& lay,
                                          int v, float* x) {
  const char* p = reinterpret_cast<const char*>(row + static_cast<int64_t>(v) * D::kVec);
  uint32_t r[4];
  if (lay.shift == 0) {
    const uint4 a = *reinterpret_cast<const uint4*>(p);
    r[0] = a.x, r[1] = a.y, r[2] = a.z, r[3] = a.w;
  } else {
    const uint4* q = reinterpret_cast<const uint4*>(p - lay.shift);
    const uint4 a = q[0], b = q[1];
    uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    const int words = lay.shift >> 2;
    const unsigned bits = (lay.shift & 3) * 8u;
#pragma unroll
    for (int i = 0; i < 6; ++i) w[i] = (words & 2) ? w[i + 2] : w[i];
#pragma unroll
    for (int i = 0; i < 5; ++i) w[i] = (words & 1) ? w[i + 1] : w[i];
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = __funnelshift_r(w[i], w[i + 1], bits);
  }
  words_to_floats<D>(r, x);
}

// Online softmax state of one thread: m is the max of what it has seen and s the fp32 sum of
// exp((x - m) / T), with exp(y / T) computed as exp2f(y * scale), scale = log2(e) / T (one
// ex2.approx under --use_fast_math). NaN or +inf in the input makes s NaN (or sets bad, while
// everything seen is -inf), so checking costs nothing per element.
struct OnlineSum {
  float m = -kInf;
  float s = 0.f;
  bool bad = false;

  __device__ __forceinline__ bool invalid() const { return bad || s != s; }

  template <int N>
  __device__ __forceinline__ void add(const float (&x)[N], float scale) {
    float hi = -kInf;
#pragma unroll
    for (int j = 0; j < N; ++j) hi = fmaxf(hi, x[j]);  // ignores NaN
    if (hi > m) {
      s *= exp2f((m - hi) * scale);  // 0 while m is -inf
      m = hi;
    }
    if (m == -kInf) {  // everything so far is -inf or NaN: nothing to add, but flag NaN
#pragma unroll
      for (int j = 0; j < N; ++j) bad |= x[j] != x[j];
      return;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) s += exp2f((x[j] - m) * scale);  // NaN for NaN or +inf
  }
};

constexpr float kLog2e = 1.4426950408889634f;

// One read of thread `tid`'s segment of a row (vectors tid + i * kThreads, then tail column
// nv * kVec + tid): its max and exp-sum. Column `skip` (the mask column, or -1) counts as -inf.
template <typename D, int kThreads>
__device__ __forceinline__ OnlineSum row_pass(const typename D::storage* row, const RowLayout& lay,
                                              int skip, float scale, int tid) {
  constexpr int kVec = D::kVec;
  constexpr int kUnroll = 4;
  OnlineSum acc;
  // The vector and lane holding `skip`, if it is in the vector part.
  const int skip_v = skip >= 0 ? skip / kVec : -1;
  const int skip_j = skip >= 0 ? skip % kVec : 0;
  if (tid < lay.tail) {
    const int col = lay.nv * kVec + tid;
    const float x[1] = {col == skip ? -kInf : D::to_float(row[col])};
    acc.add(x, scale);
  }
  int v = tid;
  for (; v + (kUnroll - 1) * kThreads < lay.nv; v += kUnroll * kThreads) {
    float x[kUnroll * kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_cols<D>(row, lay, v + u * kThreads, x + u * kVec);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v + u * kThreads == skip_v) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          if (j == skip_j) x[u * kVec + j] = -kInf;
        }
      }
    }
    acc.add(x, scale);
  }
  for (; v < lay.nv; v += kThreads) {
    float x[kVec];
    load_cols<D>(row, lay, v, x);
    if (v == skip_v) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (j == skip_j) x[j] = -kInf;
      }
    }
    acc.add(x, scale);
  }
  return acc;
}

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return a < b ? b : a;
  }
};

// Inclusive prefix sum across a warp (every lane must take part).
__device__ __forceinline__ double warp_inclusive_sum(double x, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(kFullMask, x, o);
    if (lane >= o) x += y;
  }
  return x;
}

}  // namespace edlm::cuda

// A value error found on the device: print what and where, then fail a device-side assert (see the
// comment at the top of each cuda/*.cu file for why errors take this form on CUDA).
#define EDLM_DEVICE_CHECK(cond, fmt, ...)     \
  do {                                        \
    if (C10_UNLIKELY(!(cond))) {              \
      printf("edlm::" fmt "\n", __VA_ARGS__); \
      CUDA_KERNEL_ASSERT(cond);               \
    }                                         \
  } while (0)
