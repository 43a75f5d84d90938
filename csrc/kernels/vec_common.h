// Vectorized building blocks shared by the per-instruction-set kernel files. Everything here lives
// in namespace edlm::cpu::CPU_CAPABILITY, so each instruction set gets its own copy.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels.h"

namespace edlm::cpu::CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
inline Vec load_vec(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

// The last partial vector of a range, padded with -inf (exp(-inf) = 0, max ignores it).
template <typename T>
inline Vec load_tail(const T* p, int64_t n) {
  alignas(64) float buf[kLanes];
  for (int64_t i = 0; i < kLanes; ++i) buf[i] = i < n ? static_cast<float>(p[i]) : kNegInf;
  return Vec::loadu(buf);
}

inline float reduce_max(const Vec& v) {
  alignas(64) float buf[kLanes];
  v.store(buf);
  float m = buf[0];
  for (int64_t i = 1; i < kLanes; ++i) m = (std::isnan(buf[i]) || buf[i] > m) ? buf[i] : m;
  return m;
}

inline double reduce_sum_double(const Vec& v) {
  alignas(64) float buf[kLanes];
  v.store(buf);
  double s = 0.0;
  for (int64_t i = 0; i < kLanes; ++i) s += buf[i];
  return s;
}

// Software prefetch a fixed distance ahead of a streaming read (2 KB: a few blocks of work), so
// that the loads of the next blocks overlap the exponentials of this one. benchmarks/exp_loop.cpp
// measures this arithmetic alone: a 5-15% gain there, within this machine's noise in the kernels.
template <typename T>
inline void prefetch_ahead(const T* p) {
  constexpr int64_t kAheadBytes = 2048;
  __builtin_prefetch(reinterpret_cast<const char*>(p) + kAheadBytes, 0, 3);
}

// max(x[0..n)), NaN if any element is NaN.
template <typename T>
inline float block_max(const T* x, int64_t n) {
  Vec acc0(kNegInf), acc1(kNegInf);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    prefetch_ahead(x + i);
    acc0 = at::vec::maximum(acc0, load_vec(x + i));
    acc1 = at::vec::maximum(acc1, load_vec(x + i + kLanes));
  }
  for (; i + kLanes <= n; i += kLanes) acc0 = at::vec::maximum(acc0, load_vec(x + i));
  if (i < n) acc1 = at::vec::maximum(acc1, load_tail(x + i, n - i));
  return reduce_max(at::vec::maximum(acc0, acc1));
}

// exp(x) on float32 lanes, the one exponential of every kernel: within 2 ulp of the exact value
// for x in [kExpFlush, 88.7] (tests/test_vec_exp.py sweeps it against fp64), 0 below kExpFlush and
// for -inf (and NaN: callers detect NaN from the block max), +inf above ln(FLT_MAX).
// AVX2: x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite, ln2 split in two floats), a degree-6
// polynomial for 2 exp(r) (minimax, fp32 coefficients, Horner with FMA), times 2^(n-1) built in the
// exponent bits; the split power keeps n = 128 finite until the last multiply, and the flush keeps
// 2^(n-1) normal. 17 vector instructions, one fewer than ATen's exp_u20 (documented at 20 ulp).
// AVX512: the same instructions on 16 lanes, so the same values.
// DEFAULT: std::exp per lane with the same flush.
// kStreaming (the row passes' hot loop, whose arguments are at most kMaxExponent or else redone):
// no clamp above, and NaN comes out as NaN, so that the caller sees it in the sum; two
// instructions and two constant registers fewer.
constexpr float kExpFlush = -86.f;  // exp(-86) = 4.5e-38, just above FLT_MIN

template <bool kStreaming = false>
inline Vec exp_fast(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX512)
  // The AVX2 sequence on 16 lanes, instruction for instruction (the same values bit for bit),
  // the kept lanes chosen by a mask register.
  const __m512 v = x;
  const __mmask16 keep =
      _mm512_cmp_ps_mask(v, _mm512_set1_ps(kExpFlush), kStreaming ? _CMP_NLT_UQ : _CMP_GE_OQ);
  const __m512 xc = kStreaming ? v : _mm512_min_ps(v, _mm512_set1_ps(88.8f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269502f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-1.90465421e-09f), r);
  __m512 p = _mm512_set1_ps(0x1.6ab98p-9f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.126d0cp-6f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.55589ap-4f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.55540ap-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.fffffap-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.f));
  const __m512i e =
      _mm512_slli_epi32(_mm512_cvtps_epi32(_mm512_add_ps(n, _mm512_set1_ps(126.f))), 23);
  return _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 v = x;
  // Lanes to keep: x >= kExpFlush (streaming: and NaN).
  const __m256 keep =
      _mm256_cmp_ps(v, _mm256_set1_ps(kExpFlush), kStreaming ? _CMP_NLT_UQ : _CMP_GE_OQ);
  const __m256 xc = kStreaming ? v : _mm256_min_ps(v, _mm256_set1_ps(88.8f));  // n <= 128
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269502f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147182f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-1.90465421e-09f), r);
  // 2 exp(r): the minimax coefficients of exp(r) on [-ln2/2, ln2/2], doubled (exactly).
  __m256 p = _mm256_set1_ps(0x1.6ab98p-9f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.126d0cp-6f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.55589ap-4f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.55540ap-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.fffffap-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.f));
  const __m256i e =
      _mm256_slli_epi32(_mm256_cvtps_epi32(_mm256_add_ps(n, _mm256_set1_ps(126.f))), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
#else
  alignas(64) float buf[kLanes];
  x.store(buf);
  for (int64_t i = 0; i < kLanes; ++i) {
    const bool keep = kStreaming ? !(buf[i] < kExpFlush) : buf[i] >= kExpFlush;
    buf[i] = keep ? std::exp(buf[i]) : 0.f;
  }
  return Vec::loadu(buf);
#endif
}

// max(a, b) per lane for the row passes' hot loop, which detect NaN from their exponential's sum:
// vmaxps alone (a NaN may be dropped), not at::vec::maximum's three instructions.
inline Vec max_streaming(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_max_ps(a, b);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_max_ps(a, b);
#else
  return at::vec::maximum(a, b);
#endif
}

// exp_fast over n floats (for tests: the kernels inline exp_fast itself).
inline void exp_fast_array(const float* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) exp_fast(Vec::loadu(x + i)).store(out + i);
  if (i < n)
    exp_fast(Vec::loadu(x + i, static_cast<int>(n - i))).store(out + i, static_cast<int>(n - i));
}

// out[i] = exp((x[i] - m) * inv_t) in fp32; the same values every time for the same range.
template <typename T>
inline void block_exp(const T* x, int64_t n, float m, float inv_t, float* out) {
  const Vec vm(m), vt(inv_t);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) exp_fast((load_vec(x + i) - vm) * vt).store(out + i);
  if (i < n) exp_fast((load_tail(x + i, n - i) - vm) * vt).store(out + i, static_cast<int>(n - i));
}

// sum(exp((x[i] - m) * inv_t)) with fp32 lanes, for blocks of a few thousand elements at most;
// with kStore, the exponentials also go to out[0, n).
template <bool kStore = false, typename T>
inline double block_exp_sum(const T* x, int64_t n, float m, float inv_t, float* out = nullptr) {
  const Vec vm(m), vt(inv_t);
  Vec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    prefetch_ahead(x + i);
    const Vec e0 = exp_fast((load_vec(x + i) - vm) * vt);
    const Vec e1 = exp_fast((load_vec(x + i + kLanes) - vm) * vt);
    if constexpr (kStore) e0.store(out + i), e1.store(out + i + kLanes);
    acc0 = acc0 + e0;
    acc1 = acc1 + e1;
  }
  for (; i + kLanes <= n; i += kLanes) {
    const Vec e0 = exp_fast((load_vec(x + i) - vm) * vt);
    if constexpr (kStore) e0.store(out + i);
    acc0 = acc0 + e0;
  }
  if (i < n) {
    const Vec e1 = exp_fast((load_tail(x + i, n - i) - vm) * vt);  // padding lanes are 0
    if constexpr (kStore) e1.store(out + i, static_cast<int>(n - i));
    acc1 = acc1 + e1;
  }
  return reduce_sum_double(acc0 + acc1);
}

// One read of a block: its max and sum(exp((x[i] - ref) * inv_t)) against a reference that may be
// below the block's max (the caller redoes the block if the gap could overflow fp32); with kStore,
// the exponentials also go to out[0, n). A NaN in the block makes the sum NaN (the max may miss
// it); +inf makes the max +inf.
template <bool kStore, typename T>
inline void block_max_exp_sum(const T* x, int64_t n, float ref, float inv_t, float* max_out,
                              double* sum_out, float* out) {
  const Vec vr(ref), vt(inv_t);
  // One max and one sum accumulator, each fed a pair of vectors per step: with two of each, the
  // exponential's constants leave too few of the 16 ymm registers and the compiler spilled an
  // accumulator to the stack, a store-to-load round trip on the loop's critical path.
  Vec mx(kNegInf), acc(0.f);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    prefetch_ahead(x + i);
    const Vec a = load_vec(x + i), b = load_vec(x + i + kLanes);
    mx = max_streaming(mx, max_streaming(a, b));
    const Vec e0 = exp_fast<true>((a - vr) * vt), e1 = exp_fast<true>((b - vr) * vt);
    if constexpr (kStore) e0.store(out + i), e1.store(out + i + kLanes);
    acc = acc + (e0 + e1);
  }
  for (; i + kLanes <= n; i += kLanes) {
    const Vec a = load_vec(x + i);
    mx = max_streaming(mx, a);
    const Vec e0 = exp_fast<true>((a - vr) * vt);
    if constexpr (kStore) e0.store(out + i);
    acc = acc + e0;
  }
  if (i < n) {
    const Vec a = load_tail(x + i, n - i);
    mx = max_streaming(mx, a);
    const Vec e1 = exp_fast<true>((a - vr) * vt);
    if constexpr (kStore) e1.store(out + i, static_cast<int>(n - i));
    acc = acc + e1;
  }
  *max_out = reduce_max(mx);
  *sum_out = reduce_sum_double(acc);
}

// Largest (x - ref) * inv_t a block may reach against its reference: exp(60) is far from fp32's
// overflow, and 8 lanes of a few hundred such terms still fit.
constexpr float kMaxExponent = 60.f;

// Streams a row block by block (block c is [begin(c), end(c))), in one read of memory: for each
// block, the reference it was exponentiated against (ref[c]), its max (max[c]) and
// sum[c] = sum(exp((x - ref[c]) * inv_t)); with kStore those exponentials also go to
// store[begin(c), end(c)). Returns false if the row holds NaN or +inf.
template <bool kStore = false, typename T, typename Range>
inline bool stream_row(const T* row, int64_t num_blocks, Range range, float inv_t, float* ref,
                       float* max, double* sum, float* store = nullptr) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float run = kNegInf;  // running reference: the largest block max so far
  for (int64_t c = 0; c < num_blocks; ++c) {
    const auto [lo, hi] = range(c);
    const T* x = row + lo;
    const int64_t n = hi - lo;
    float* out = kStore ? store + lo : nullptr;
    float m;
    double s = 0.0;
    if (run == kNegInf) {
      m = block_max(x, n);
      if (m == kNegInf || std::isnan(m) || m == kInf) {
        if constexpr (kStore) std::fill(out, out + n, 0.f);
      } else {
        s = block_exp_sum<kStore>(x, n, m, inv_t, out);
      }
      ref[c] = m;
    } else {
      block_max_exp_sum<kStore>(x, n, run, inv_t, &m, &s, out);
      if (std::isnan(s)) return false;  // before a redo, whose exponential drops NaN
      ref[c] = run;
      if ((m - run) * inv_t > kMaxExponent && m != kInf) {
        s = block_exp_sum<kStore>(x, n, m, inv_t, out);
        ref[c] = m;
      }
    }
    if (std::isnan(m) || m == kInf) return false;
    max[c] = m;
    sum[c] = s;
    run = std::max(run, m);
  }
  return true;
}

// Lane i of a comparison result (all ones or all zeros per lane) as bit i.
inline int lane_bits(const Vec& cmp) {
#if defined(CPU_CAPABILITY_AVX2)
  return _mm256_movemask_ps(cmp);
#else
  return ~cmp.zero_mask() & ((1 << kLanes) - 1);
#endif
}

// AVX2: for each 8-bit lane selection, the selected lane numbers in order (then zeros): the
// permutation that packs them to the front.
struct CompressTable {
  alignas(32) int32_t idx[256][8];
};
constexpr CompressTable make_compress_table() {
  CompressTable t{};
  for (int bits = 0; bits < 256; ++bits) {
    int n = 0;
    for (int i = 0; i < 8; ++i) {
      if (bits >> i & 1) t.idx[bits][n++] = i;
    }
  }
  return t;
}
inline constexpr CompressTable kCompressTable = make_compress_table();

// The lanes of v selected by bits (lane i if bit i) written to out[0, popcount(bits)) in lane
// order, without a branch per lane; out must have room for kLanes floats.
inline void compress_store(const Vec& v, int bits, float* out) {
#if defined(CPU_CAPABILITY_AVX2)
  static_assert(kLanes == 8);
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompressTable.idx[bits]));
  _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(v, idx));
#else
  alignas(64) float buf[kLanes];
  v.store(buf);
  for (int64_t i = 0, n = 0; i < kLanes; ++i) {
    if (bits >> i & 1) out[n++] = buf[i];
  }
#endif
}

// Sum of n floats in double (four independent accumulators, so it vectorizes).
inline double sum_double(const float* e, int64_t n) {
  double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += e[i];
    a1 += e[i + 1];
    a2 += e[i + 2];
    a3 += e[i + 3];
  }
  for (; i < n; ++i) a0 += e[i];
  return (a0 + a1) + (a2 + a3);
}

// Calls f with the logits pointer cast to its element type.
template <typename F>
inline void with_logits_type(LogitsType t, const void* p, F&& f) {
  switch (t) {
    case LogitsType::kFloat:
      f(static_cast<const float*>(p));
      break;
    case LogitsType::kBFloat16:
      f(static_cast<const c10::BFloat16*>(p));
      break;
    case LogitsType::kHalf:
      f(static_cast<const c10::Half*>(p));
      break;
  }
}

}  // namespace edlm::cpu::CPU_CAPABILITY
