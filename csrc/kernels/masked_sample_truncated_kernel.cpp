// CPU kernel of edlm::masked_sample with top_k / top_p, compiled once per instruction set (see
// kernels.h; the AVX-512 build calls the AVX2 one, below). The law: softmax(logits / T) restricted
// to the tokens at or above a threshold logit, top-k first, then the smallest head holding top_p of
// the renormalized top-k mass, all tokens tied at the threshold kept. No sort of the row:
// - top_k: one max-only read of the row. The k-th largest block max bounds the threshold from
//   below, so only the few tokens at or above it are gathered, and the draws run over them with
//   fp64 weights (no exponential of the rest of the row).
// - top_p alone: one read of the row stores each block's exponentials. A strided sample of the row
//   brackets the threshold; one pass over the stored values gives the exact mass above the bracket
//   and the tokens inside it, and the threshold is found among those. The sample only decides the
//   speed: a bracket that misses is detected exactly, and probe rounds narrow the range instead.
//   The draws are the plain kernel's two-level inverse CDF over the kept tokens.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <vector>

#include "../philox.h"
#include "masked_sample_common.h"

namespace edlm::cpu::CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)
// The AVX-512 build runs the AVX2 code: on this project's CPU (AMD EPYC, Zen 4) the same kernel
// compiled for AVX-512 drew top_p = 0.9 on flat logits 25-40% slower than the AVX2 build, the loss
// in its bracket pass, which five rewrites of the compress step did not recover (BENCHMARKS.md,
// session 7); top_k, alone or with top_p, was 0-15% slower.
void masked_sample_truncated(const MaskedSampleParams& p) { AVX2::masked_sample_truncated(p); }
#else

namespace {

// sum of e[i] over the block's tokens with x[i] >= t (fp32 lanes, as block_exp_sum).
template <typename T>
inline double kept_exp_sum(const T* x, const float* e, int64_t n, float t) {
  const Vec vt(t), zero(0.f);
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    acc = acc + Vec::blendv(zero, Vec::loadu(e + i), load_vec(x + i) >= vt);
  if (i < n) acc = acc + Vec::blendv(zero, Vec::loadu(e + i, n - i), load_tail(x + i, n - i) >= vt);
  return reduce_sum_double(acc);
}

// The same sums for kProbes thresholds t[0..kProbes) at once, into out[].
constexpr int kProbes = 8;
template <typename T>
inline void probe_exp_sums(const T* x, const float* e, int64_t n, const float* t, double* out) {
  const Vec zero(0.f);
  Vec acc[kProbes], vt[kProbes];
  for (int j = 0; j < kProbes; ++j) acc[j] = zero, vt[j] = Vec(t[j]);
  auto add = [&](const Vec& xv, const Vec& ev) {
    for (int j = 0; j < kProbes; ++j) acc[j] = acc[j] + Vec::blendv(zero, ev, xv >= vt[j]);
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) add(load_vec(x + i), Vec::loadu(e + i));
  if (i < n) add(load_tail(x + i, n - i), Vec::loadu(e + i, n - i));
  for (int j = 0; j < kProbes; ++j) out[j] = reduce_sum_double(acc[j]);
}

// A token that may be at or above the truncation threshold: its logit and its mass relative to the
// row's top token.
struct Candidate {
  float x;
  double w;
};

// The largest logit t in c with above + (mass of c at logits >= t) >= target, ties at t counted
// together; c must hold every token at or above the answer (`above`: the mass of the tokens above
// them all). Histograms of the logits narrow c to one bin while it is large, then one short sort.
inline float mass_threshold(std::vector<Candidate>& c, double above, double target,
                            float fallback) {
  if (c.empty()) return fallback;
  constexpr int kBins = 1024;
  constexpr size_t kSmall = 64;
  std::array<double, kBins> hist;
  for (int level = 0; c.size() > kSmall && level < 4; ++level) {
    float lo = c[0].x, hi = c[0].x;
    for (const Candidate& e : c) lo = std::min(lo, e.x), hi = std::max(hi, e.x);
    const double scale = kBins / (static_cast<double>(hi) - lo);
    if (!(hi > lo) || !std::isfinite(scale)) break;
    // Monotone in x, so a higher bin holds only larger logits and ties share a bin.
    auto bin = [&](float x) {
      return std::min(kBins - 1, static_cast<int>((static_cast<double>(x) - lo) * scale));
    };
    hist.fill(0.0);
    for (const Candidate& e : c) hist[bin(e.x)] += e.w;
    int b = kBins - 1;
    for (; b > 0 && above + hist[b] < target; --b) above += hist[b];
    c.erase(std::remove_if(c.begin(), c.end(), [&](const Candidate& e) { return bin(e.x) != b; }),
            c.end());
  }
  std::sort(c.begin(), c.end(), [](const Candidate& a, const Candidate& b) { return a.x > b.x; });
  for (size_t i = 0; i < c.size();) {
    size_t j = i;
    while (j < c.size() && c[j].x == c[i].x) above += c[j++].w;
    if (above >= target) return c[i].x;
    i = j;
  }
  return c.back().x;  // rounding kept the target out of reach: keep every candidate
}

// A sampled column of the row: its logit, its stored exponential and its block.
struct Sample {
  float x, e;
  int64_t block;
};

// Per-thread buffers, reused across rows.
struct Scratch {
  explicit Scratch(const MaskedSampleParams& p)
      : buf(p.max_block + kLanes),
        e(p.V + kLanes),
        block_max(p.num_blocks),
        ref(p.num_blocks),
        cx(p.V + kLanes),
        ce(p.V + kLanes),
        bins(p.V + kLanes),
        block_sum(p.num_blocks),
        scale(p.num_blocks),
        prefix(p.num_blocks),
        above(p.num_blocks),
        cand_end(p.num_blocks) {}
  std::vector<float> buf, e, block_max, maxima;
  std::vector<float> ref;         // the reference block c's exponentials e were taken against
  std::vector<float> cx, ce;      // bracket pass: logits and e of the tokens inside the bracket
  std::vector<int32_t> bins;      // and their histogram bins
  std::vector<double> block_sum;  // sum of e over the block
  std::vector<double> scale;      // exp((ref - row max) / T): e * scale is a token's mass
  std::vector<double> prefix, above;
  std::vector<size_t> cand_end;  // bracket tokens of blocks [0, c] are cx[0, cand_end[c])
  std::vector<Candidate> cand, work;
  std::vector<Sample> sample;
  std::vector<int64_t> index;  // top-k path: kept columns, their logits and fp64 weights
  std::vector<float> kx;
  std::vector<double> kw, cum;
};

// The first of block c's bracketed tokens in s.cx / s.ce (the last is s.cand_end[c] - 1).
inline size_t cand_begin(const Scratch& s, int64_t c) { return c == 0 ? 0 : s.cand_end[c - 1]; }

inline void write_draw(const MaskedSampleParams& p, int64_t b, int64_t k, int64_t l, int64_t token,
                       double logp) {
  p.tokens[(b * p.K + k) * p.L + l] = token;
  p.logp[(b * p.K + k) * p.L + l] = static_cast<float>(logp);
}

inline Philox4 draw_uniforms(const MaskedSampleParams& p, int64_t b, int64_t k, int64_t l) {
  return philox4x32_10(static_cast<uint32_t>(l), static_cast<uint32_t>(k), static_cast<uint32_t>(b),
                       kTokenStream, p.key);
}

// Calls f(block, column, logit) for every token with lb <= logit < ub, in column order, from the
// blocks whose max reaches lb; vectors with no such lane are skipped whole.
template <typename T, typename F>
inline void for_each_between(const T* row, const MaskedSampleParams& p, const float* block_max,
                             float lb, float ub, F&& f) {
  const Vec vlb(lb), vub(ub);
  for (int64_t c = 0; c < p.num_blocks; ++c) {
    if (!(block_max[c] >= lb)) continue;
    const int64_t lo = p.block_begin[c], hi = p.block_end[c];
    for (int64_t i0 = lo; i0 < hi; i0 += kLanes) {
      const int64_t m = std::min<int64_t>(kLanes, hi - i0);
      const Vec xv = m == kLanes ? load_vec(row + i0) : load_tail(row + i0, m);
      if (lane_bits((xv >= vlb) & (xv < vub)) == 0) continue;
      for (int64_t i = i0; i < i0 + m; ++i) {
        const float x = static_cast<float>(row[i]);
        if (x >= lb && x < ub) f(c, i, x);
      }
    }
  }
}

// The row's top_k law (then top_p of it): kept columns in column order with their fp64 weights,
// drawn by one inverse CDF over them.
template <typename T>
void top_k_row(const T* row, const MaskedSampleParams& p, int64_t pos, Scratch& s) {
  const int64_t nb = p.num_blocks, b = pos / p.L, l = pos % p.L;
  bool ok = true;
  for (int64_t c = 0; c < nb && ok; ++c) {
    const float m = block_max(row + p.block_begin[c], p.block_end[c] - p.block_begin[c]);
    ok = !std::isnan(m) && m != kInf;
    s.block_max[c] = m;
  }
  const float row_max = checked_row_max(ok, s.block_max.data(), nb, pos, p);
  if (std::isnan(row_max)) return;

  // The k-th largest block max bounds the k-th largest logit from below.
  float lb = kNegInf;
  if (p.top_k <= nb) {
    s.maxima.assign(s.block_max.begin(), s.block_max.end());
    std::nth_element(s.maxima.begin(), s.maxima.begin() + (p.top_k - 1), s.maxima.end(),
                     std::greater<float>());
    lb = s.maxima[p.top_k - 1];
  }
  // Every column with logit >= lb (at least k: the k block maxima), massless ones included, since
  // top-k counts tokens. Vectors with no such lane are skipped whole.
  s.index.clear();
  s.kx.clear();
  for_each_between(row, p, s.block_max.data(), lb, kInf, [&](int64_t, int64_t i, float x) {
    s.index.push_back(i);
    s.kx.push_back(x);
  });
  s.maxima.assign(s.kx.begin(), s.kx.end());
  std::nth_element(s.maxima.begin(), s.maxima.begin() + (p.top_k - 1), s.maxima.end(),
                   std::greater<float>());
  float threshold = s.maxima[p.top_k - 1];

  // Keep the columns at or above the threshold, in column order, with weight exp((x - max) / T).
  auto keep_from = [&](float t) {
    size_t n = 0;
    for (size_t i = 0; i < s.kx.size(); ++i) {
      if (s.kx[i] < t) continue;
      s.index[n] = s.index[i];
      s.kx[n] = s.kx[i];
      s.kw[n++] = std::exp((static_cast<double>(s.kx[i]) - row_max) * p.inv_temperature);
    }
    s.index.resize(n), s.kx.resize(n), s.kw.resize(n);
  };
  s.kw.resize(s.kx.size());
  keep_from(threshold);
  if (p.top_p < 1.0) {
    s.work.clear();
    double mass = 0.0;
    for (size_t i = 0; i < s.kx.size(); ++i) {
      if (s.kw[i] > 0.0) s.work.push_back({s.kx[i], s.kw[i]}), mass += s.kw[i];
    }
    threshold = mass_threshold(s.work, 0.0, p.top_p * mass, threshold);
    keep_from(threshold);
  }

  s.cum.resize(s.kw.size());
  double total = 0.0;
  size_t last = 0;  // the last column with positive weight (the row max's column has weight 1)
  for (size_t i = 0; i < s.kw.size(); ++i) {
    total += s.kw[i];
    s.cum[i] = total;
    if (s.kw[i] > 0.0) last = i;
  }
  for (int64_t k = 0; k < p.K; ++k) {
    const Philox4 u = draw_uniforms(p, b, k, l);
    // The first column whose cumulative weight exceeds u * total: never a massless one.
    size_t i = std::upper_bound(s.cum.begin(), s.cum.end(), uniform53(u.w[0], u.w[1]) * total) -
               s.cum.begin();
    if (i >= s.kw.size()) i = last;
    write_draw(p, b, k, l, s.index[i], std::log(s.kw[i] / total));
  }
}

// Brackets the top-p threshold from two strata: the block maxima, known exactly, and the strided
// sample of the other tokens. The mass below a logit t is estimated as the block maxima's mass
// below t plus f times the sampled mass below t (f = columns per sampled column), and
// [t_lo, t_hi) spans the bin edges where that estimate is within kZ standard deviations of
// (1 - top_p) * mass. False when the sample cannot tell (fewer than two distinct logits, or
// top_p rounding to 1).
inline bool sample_bracket(const Scratch& s, int64_t nb, int64_t sampled, int64_t n_real,
                           double mass, double top_p, float row_max, float inv_t, float* t_lo,
                           float* t_hi) {
  constexpr int kBins = 512;
  constexpr double kZ = 3.5;
  if (s.sample.size() < 2) return false;
  float lo = kInf;
  for (const Sample& q : s.sample) lo = std::min(lo, q.x);
  const double width = static_cast<double>(row_max) - lo;
  if (!(width > 0.0)) return false;
  double hs[kBins] = {}, hs2[kBins] = {}, hx[kBins] = {};  // sampled w, w^2; block maxima's w
  const double per_bin = kBins / width;
  auto bin = [&](float x) {
    const double v = (static_cast<double>(x) - lo) * per_bin;
    return v >= kBins - 1 ? kBins - 1 : v > 0.0 ? static_cast<int>(v) : 0;
  };
  for (const Sample& q : s.sample) {
    const double w = static_cast<double>(q.e) * s.scale[q.block];
    hs[bin(q.x)] += w;
    hs2[bin(q.x)] += w * w;
  }
  for (int64_t c = 0; c < nb; ++c) {
    if (s.block_max[c] != kNegInf)
      hx[bin(s.block_max[c])] += std::exp((static_cast<double>(s.block_max[c]) - row_max) * inv_t);
  }
  const double f = static_cast<double>(n_real) / static_cast<double>(sampled);
  const double below = (1.0 - top_p) * mass;  // the mass the kept set leaves out, at most
  *t_lo = kNegInf;
  *t_hi = kInf;
  double g = 0.0, g2 = 0.0, gx = 0.0;  // the histograms' sums below edge j
  for (int j = 0; j <= kBins; ++j) {
    const float edge = j == kBins ? row_max : static_cast<float>(lo + width * j / kBins);
    // est +- kZ sd against `below`, compared in squares: est = f g + gx, sd^2 = f^2 g2.
    const double gap = below - f * g - gx, spread = kZ * kZ * f * f * g2;
    if (gap > 0.0 && gap * gap > spread) *t_lo = edge;
    if (gap < 0.0 && gap * gap > spread) {
      *t_hi = edge;
      break;
    }
    if (j < kBins) g += hs[j], g2 += hs2[j], gx += hx[j];
  }
  return *t_lo != kNegInf && *t_lo < *t_hi;
}

// One pass over the row's blocks that reach t_lo: per block, the exact mass at logits >= t_hi
// (s.above) and the logits and e of the tokens with mass in [t_lo, t_hi), packed into s.cx, s.ce
// (blocks in order, without a branch per token). Returns the mass above t_hi.
template <typename T>
double bracket_pass(const T* row, const MaskedSampleParams& p, Scratch& s, float t_lo, float t_hi) {
  const float* e = s.e.data();
  const Vec vlo(t_lo), vhi(t_hi);
  double above_total = 0.0;
  size_t n = 0;
  for (int64_t c = 0; c < p.num_blocks; ++c) {
    s.above[c] = 0.0;
    if (s.block_max[c] >= t_lo && s.scale[c] > 0.0) {
      const int64_t lo = p.block_begin[c], hi = p.block_end[c];
      Vec acc(0.f);
      auto step = [&](const Vec& xv, const Vec& ev) {
        const Vec ge_hi = xv >= vhi;
        acc = acc + (ev & ge_hi);
        // Lanes with t_lo <= x < t_hi (padding lanes are -inf < t_lo; massless tokens add 0).
        const int in = lane_bits(xv >= vlo) & ~lane_bits(ge_hi);
        compress_store(xv, in, s.cx.data() + n);
        compress_store(ev, in, s.ce.data() + n);
        n += __builtin_popcount(in);
      };
      int64_t i0 = lo;
      for (; i0 + kLanes <= hi; i0 += kLanes) step(load_vec(row + i0), Vec::loadu(e + i0));
      if (i0 < hi) {
        const int m = static_cast<int>(hi - i0);
        step(load_tail(row + i0, m), Vec::loadu(e + i0, m));
      }
      s.above[c] = reduce_sum_double(acc) * s.scale[c];
      above_total += s.above[c];
    }
    s.cand_end[c] = n;
  }
  return above_total;
}

// The threshold from the bracket's tokens (s.cx, s.ce, blocks in order; every one in [lo, hi]):
// a histogram of their masses over the logit finds the bin holding the answer, and
// mass_threshold resolves it among that bin's few tokens.
inline float bracket_threshold(Scratch& s, int64_t nb, double above, double target, float lo,
                               float hi) {
  constexpr int kBins = 1024;
  std::array<double, kBins> hist{};
  const size_t n = s.cand_end[nb - 1];
  // Monotone in x (a float difference, a scale, a clamp, a truncation), so a higher bin holds only
  // larger logits and ties share a bin. A loop the compiler vectorizes.
  float per_bin = hi > lo ? kBins / (hi - lo) : 0.f;
  if (!std::isfinite(per_bin)) per_bin = 0.f;
  int32_t* bins = s.bins.data();
  for (size_t i = 0; i < n; ++i) {
    const float v = std::min(std::max((s.cx[i] - lo) * per_bin, 0.f), kBins - 1.f);
    bins[i] = static_cast<int32_t>(v);
  }
  for (int64_t c = 0, i = 0; c < nb; ++c) {
    for (; i < static_cast<int64_t>(s.cand_end[c]); ++i) hist[bins[i]] += s.ce[i] * s.scale[c];
  }
  int b = kBins - 1;
  for (; b > 0 && above + hist[b] < target; --b) above += hist[b];
  s.work.clear();
  for (int64_t c = 0, i = 0; c < nb; ++c) {
    for (; i < static_cast<int64_t>(s.cand_end[c]); ++i) {
      if (bins[i] == b) s.work.push_back({s.cx[i], s.ce[i] * s.scale[c]});
    }
  }
  return mass_threshold(s.work, above, target, lo);
}

// The top-p threshold by probe rounds (when the sample's bracket missed): kProbes thresholds
// between a safe lower bound and the row max, twice, then the tokens left between the two probes
// that straddle the target.
template <typename T>
float probe_threshold(const T* row, const MaskedSampleParams& p, Scratch& s, float row_max,
                      double mass) {
  const int64_t nb = p.num_blocks, n_real = p.V - 1;
  const float* e = s.e.data();
  const double target = p.top_p * mass;
  // Every token below lb weighs less than exp((lb - row_max) / T) = (1 - top_p) mass /
  // (2 n_real): together less than half the mass top_p leaves out, so the answer is >= lb.
  float lb = static_cast<float>(row_max + std::log((1.0 - p.top_p) * mass / (2.0 * n_real)) /
                                              static_cast<double>(p.inv_temperature));
  float ub = kInf;
  double above = 0.0;  // mass at logits >= ub
  for (int round = 0; round < 2 && std::isfinite(lb) && row_max > lb; ++round) {
    float t[kProbes];
    double m[kProbes] = {}, part[kProbes];
    const float top = std::min(row_max, ub);
    for (int q = 0; q < kProbes; ++q) t[q] = lb + (top - lb) * (q + 1) / (kProbes + 1);
    for (int64_t c = 0; c < nb; ++c) {
      if (!(s.block_max[c] >= t[0]) || s.scale[c] == 0.0) continue;
      const int64_t lo = p.block_begin[c], hi = p.block_end[c];
      probe_exp_sums(row + lo, e + lo, hi - lo, t, part);
      for (int q = 0; q < kProbes; ++q) m[q] += part[q] * s.scale[c];
    }
    int q = kProbes - 1;
    while (q >= 0 && !(m[q] >= target)) --q;
    if (q + 1 < kProbes) ub = t[q + 1], above = m[q + 1];
    if (q >= 0) lb = t[q];
  }
  // The tokens with lb <= logit < ub and mass > 0.
  s.cand.clear();
  for_each_between(row, p, s.block_max.data(), lb, ub, [&](int64_t c, int64_t i, float x) {
    if (e[i] > 0.f) s.cand.push_back({x, e[i] * s.scale[c]});
  });
  return mass_threshold(s.cand, above, target, lb);
}

// The row's top_p law: two-level inverse CDF over the tokens at or above the threshold.
template <typename T>
void top_p_row(const T* row, const MaskedSampleParams& p, int64_t pos, Scratch& s) {
  constexpr int64_t kSampleSize = 1024;
  const int64_t nb = p.num_blocks, n_real = p.V - 1, b = pos / p.L, l = pos % p.L;
  const float inv_t = p.inv_temperature;
  float* e = s.e.data();
  const int64_t stride = std::max<int64_t>(1, n_real / kSampleSize);

  // One read of the row: per block, its max, the exponentials against its reference and their
  // sum (as the plain kernel, keeping the exponentials); then every stride-th column that is not
  // its block's max.
  const bool ok = stream_row<true>(
      row, nb, [&](int64_t c) { return std::pair{p.block_begin[c], p.block_end[c]}; }, inv_t,
      s.ref.data(), s.block_max.data(), s.block_sum.data(), e);
  s.sample.clear();
  int64_t sampled = 0;
  for (int64_t c = 0; c < nb && ok; ++c) {
    const int64_t lo = p.block_begin[c], hi = p.block_end[c];
    for (int64_t i = (lo + stride - 1) / stride * stride; i < hi; i += stride, ++sampled) {
      const float x = static_cast<float>(row[i]);
      if (e[i] > 0.f && x != s.block_max[c]) s.sample.push_back({x, e[i], c});
    }
  }
  const float row_max = checked_row_max(ok, s.block_max.data(), nb, pos, p);
  if (std::isnan(row_max)) return;
  double mass = 0.0;
  for (int64_t c = 0; c < nb; ++c) {
    s.scale[c] = s.block_max[c] == kNegInf
                     ? 0.0
                     : std::exp((static_cast<double>(s.ref[c]) - row_max) * inv_t);
    mass += s.block_sum[c] * s.scale[c];
  }
  const double target = p.top_p * mass;
  float threshold, t_lo, t_hi;
  bool bracketed = false;
  if (sample_bracket(s, nb, sampled, n_real, mass, p.top_p, row_max, inv_t, &t_lo, &t_hi)) {
    const double above = bracket_pass(row, p, s, t_lo, t_hi);
    double inside = 0.0;
    for (int64_t c = 0; c < nb; ++c) {
      const size_t i = cand_begin(s, c);
      inside += sum_double(s.ce.data() + i, s.cand_end[c] - i) * s.scale[c];
    }
    // The answer is in [t_lo, t_hi) exactly when the mass at >= t_hi falls short of the target
    // and the mass at >= t_lo reaches it.
    bracketed = above < target && above + inside >= target;
    if (bracketed)
      threshold = bracket_threshold(s, nb, above, target, t_lo, std::min(t_hi, row_max));
  }
  if (!bracketed) threshold = probe_threshold(row, p, s, row_max, mass);

  // Block masses of the kept tokens; a block whose max is below the threshold keeps none.
  double total = 0.0;
  int64_t last_block = 0;
  for (int64_t c = 0; c < nb; ++c) {
    double kept = 0.0;
    if (bracketed) {
      const size_t i = cand_begin(s, c);
      kept =
          s.above[c] +
          kept_exp_sum(s.cx.data() + i, s.ce.data() + i, s.cand_end[c] - i, threshold) * s.scale[c];
    } else if (s.block_max[c] >= threshold && s.scale[c] > 0.0) {
      const int64_t lo = p.block_begin[c], hi = p.block_end[c];
      kept = kept_exp_sum(row + lo, e + lo, hi - lo, threshold) * s.scale[c];
    }
    if (kept > 0.0) {
      total += kept;
      last_block = c;
    }
    s.prefix[c] = total;
  }

  for (int64_t k = 0; k < p.K; ++k) {
    const Philox4 u = draw_uniforms(p, b, k, l);
    const int64_t c = pick_block(s.prefix.data(), nb, last_block, uniform53(u.w[0], u.w[1]));
    const int64_t lo = p.block_begin[c], n = p.block_end[c] - lo;
    for (int64_t i = 0; i < n; ++i)
      s.buf[i] = static_cast<float>(row[lo + i]) >= threshold ? e[lo + i] : 0.f;
    const int64_t token = lo + inverse_cdf(s.buf.data(), n, uniform53(u.w[2], u.w[3]));
    // In the kernel's own weights, so a kept set of one token has logp 0 exactly.
    write_draw(p, b, k, l, token, std::log(static_cast<double>(e[token]) * s.scale[c] / total));
  }
}

template <typename T>
void masked_sample_truncated_impl(const T* logits, const MaskedSampleParams& p) {
  at::parallel_for(0, p.num_masked, 1, [&](int64_t begin, int64_t end) {
    Scratch s(p);
    for (int64_t j = begin; j < end; ++j) {
      const int64_t pos = p.masked[j];
      const T* row = logits + (pos / p.L) * p.stride_b + (pos % p.L) * p.stride_l;
      if (p.top_k > 0) {
        top_k_row(row, p, pos, s);
      } else {
        top_p_row(row, p, pos, s);
      }
    }
  });
}

}  // namespace

void masked_sample_truncated(const MaskedSampleParams& p) {
  with_logits_type(p.dtype, p.logits,
                   [&](auto* logits) { masked_sample_truncated_impl(logits, p); });
}

#endif  // CPU_CAPABILITY_AVX512

}  // namespace edlm::cpu::CPU_CAPABILITY
