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

// Sixteen bytes at a 16-byte-aligned address, as kVec floats in x[0, kVec) (inlined with constant
// offsets, x stays in registers).
template <typename D>
__device__ __forceinline__ void load_vec(const typename D::storage* p, float* x) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
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

// A row of V elements split for 16-byte loads: `head` scalars up to the first aligned address,
// `nv` aligned vectors, then `tail` scalars (head, tail < kVec). Column of vector element j of
// vector v: head + v * kVec + j.
struct RowLayout {
  int head;
  int nv;
  int tail;
};

template <typename D>
__device__ __forceinline__ RowLayout row_layout(const typename D::storage* row, int V) {
  constexpr int kBytes = sizeof(typename D::storage);
  const int misaligned = static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15u) / kBytes;
  const int head = min(misaligned == 0 ? 0 : D::kVec - misaligned, V);
  const int nv = (V - head) / D::kVec;
  return RowLayout{head, nv, V - head - nv * D::kVec};
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

// One read of thread `tid`'s segment of a row (head element tid, vectors tid + i * kThreads, tail
// element tid): its max and exp-sum. Column `skip` (the mask column, or -1) counts as -inf.
template <typename D, int kThreads>
__device__ __forceinline__ OnlineSum row_pass(const typename D::storage* row, const RowLayout& lay,
                                              int skip, float scale, int tid) {
  constexpr int kVec = D::kVec;
  constexpr int kUnroll = 4;
  OnlineSum acc;
  const typename D::storage* vec_base = row + lay.head;
  // The vector and lane holding `skip`, if it is in the vector part.
  const int skip_v = skip >= lay.head ? (skip - lay.head) / kVec : -1;
  const int skip_j = skip >= lay.head ? (skip - lay.head) % kVec : 0;
  if (tid < lay.head) {
    const float x[1] = {tid == skip ? -kInf : D::to_float(row[tid])};
    acc.add(x, scale);
  }
  if (tid < lay.tail) {
    const int col = lay.head + lay.nv * kVec + tid;
    const float x[1] = {col == skip ? -kInf : D::to_float(row[col])};
    acc.add(x, scale);
  }
  int v = tid;
  for (; v + (kUnroll - 1) * kThreads < lay.nv; v += kUnroll * kThreads) {
    float x[kUnroll * kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      load_vec<D>(vec_base + (v + u * kThreads) * kVec, x + u * kVec);
    }
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
    load_vec<D>(vec_base + v * kVec, x);
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
