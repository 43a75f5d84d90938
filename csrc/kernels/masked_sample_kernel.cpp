// CPU kernel of edlm::masked_sample, compiled once per instruction set (see kernels.h).
// Exact inverse-CDF sampling from softmax(logits / T) without the mask column: one read of the row
// gives per-block masses; each draw picks a block by its mass, then a token inside it,
// both with 53-bit uniforms, so tokens far below 2^-24 of the top one are drawn at their true rate
// (EDLM.md trap 6) and K draws cost one pass plus K short block scans.
// With top_k / top_p the row's exponentials are kept, the threshold logit is found from the
// tokens the block maxima cannot rule out (no sort of the row), and the same two-level draw runs
// over the kept tokens only.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "../philox.h"
#include "vec_common.h"

namespace edlm::cpu::CPU_CAPABILITY {

const char* name() {
#if defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Block of a draw: the first whose cumulative mass (prefix, inclusive) exceeds u * total;
// zero-mass blocks never are, and u * total rounded up to total falls to the last positive one.
inline int64_t pick_block(const double* prefix, int64_t nb, int64_t last_block, double u) {
  const int64_t c = std::upper_bound(prefix, prefix + nb, u * prefix[nb - 1]) - prefix;
  return c >= nb ? last_block : c;
}

// Token inside a block of weights w[0, n): exact inverse CDF at u, normalized in fp64. Whole
// chunks of 8 are skipped by their fp64 sums (independent, so they pipeline) and only the chunk
// that crosses the target is walked token by token: a K-draw call rescans K blocks, and this walk
// was its serial part.
inline int64_t inverse_cdf(const float* w, int64_t n, double u) {
  const double target = u * sum_double(w, n);
  double cum = 0.0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const double s =
        ((static_cast<double>(w[i]) + w[i + 1]) + (static_cast<double>(w[i + 2]) + w[i + 3])) +
        ((static_cast<double>(w[i + 4]) + w[i + 5]) + (static_cast<double>(w[i + 6]) + w[i + 7]));
    if (cum + s > target) break;
    cum += s;
  }
  for (; i < n; ++i) {
    cum += w[i];
    if (cum > target) return i;
  }
  // u * total rounded up to the total: the last token with positive weight.
  for (int64_t j = n - 1; j > 0; --j) {
    if (w[j] > 0.f) return j;
  }
  return 0;
}

// The row's max over its block maxima, or NaN after recording why nothing can be drawn from it
// (ok = false: NaN or +inf in the row).
inline float checked_row_max(bool ok, const float* block_max, int64_t nb, int64_t pos,
                             const MaskedSampleParams& p) {
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  if (!ok) {
    p.status->fail(KernelStatus::kNonFinite, pos);
    return kNaN;
  }
  const float m = *std::max_element(block_max, block_max + nb);
  if (m == kNegInf) {
    p.status->fail(KernelStatus::kAllNegInf, pos);
    return kNaN;
  }
  return m;
}

template <typename T>
void masked_sample_impl(const T* logits, const MaskedSampleParams& p) {
  const int64_t L = p.L, K = p.K, nb = p.num_blocks;
  at::parallel_for(0, p.num_masked, 1, [&](int64_t begin, int64_t end) {
    auto buf = std::make_unique<float[]>(p.max_block + kLanes);
    auto block_ref = std::make_unique<float[]>(nb);  // reference each block was scaled by
    auto block_max_ = std::make_unique<float[]>(nb);
    auto block_s = std::make_unique<double[]>(nb);  // sum of exp((x - block_ref) / T) in the block
    auto prefix = std::make_unique<double[]>(nb);   // cumulative block masses relative to the max
    for (int64_t j = begin; j < end; ++j) {
      const int64_t pos = p.masked[j], b = pos / L, l = pos % L;
      const T* row = logits + b * p.stride_b + l * p.stride_l;

      // One read of the row: per-block references, maxima and fp32-lane masses.
      const bool ok = stream_row(
          row, nb, [&](int64_t c) { return std::pair{p.block_begin[c], p.block_end[c]}; },
          p.inv_temperature, block_ref.get(), block_max_.get(), block_s.get());
      const float row_max = checked_row_max(ok, block_max_.get(), nb, pos, p);
      if (std::isnan(row_max)) continue;
      double total = 0.0;
      int64_t last_block = 0;
      for (int64_t c = 0; c < nb; ++c) {
        if (block_s[c] > 0.0) {
          total += block_s[c] * std::exp((static_cast<double>(block_ref[c]) - row_max) *
                                         static_cast<double>(p.inv_temperature));
          last_block = c;
        }
        prefix[c] = total;
      }
      const double log_total = std::log(total);

      for (int64_t k = 0; k < K; ++k) {
        const Philox4 u = philox4x32_10(static_cast<uint32_t>(l), static_cast<uint32_t>(k),
                                        static_cast<uint32_t>(b), kTokenStream, p.key);
        const int64_t c = pick_block(prefix.get(), nb, last_block, uniform53(u.w[0], u.w[1]));
        const int64_t lo = p.block_begin[c], n = p.block_end[c] - lo;
        block_exp(row + lo, n, block_ref[c], p.inv_temperature, buf.get());
        const int64_t token = lo + inverse_cdf(buf.get(), n, uniform53(u.w[2], u.w[3]));
        const double x = static_cast<float>(row[token]);
        p.tokens[(b * K + k) * L + l] = token;
        p.logp[(b * K + k) * L + l] =
            static_cast<float>((x - row_max) * static_cast<double>(p.inv_temperature) - log_total);
      }
    }
  });
}

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

// A token that may be at or above the truncation threshold: its logit and its mass
// e * exp((block max - row max) / T) relative to the row's top token.
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
  constexpr size_t kSmall = 2048;
  std::vector<double> hist;
  for (int level = 0; c.size() > kSmall && level < 4; ++level) {
    float lo = c[0].x, hi = c[0].x;
    for (const Candidate& e : c) lo = std::min(lo, e.x), hi = std::max(hi, e.x);
    const double scale = kBins / (static_cast<double>(hi) - lo);
    if (!(hi > lo) || !std::isfinite(scale)) break;
    // Monotone in x, so a higher bin holds only larger logits and ties share a bin.
    auto bin = [&](float x) {
      return std::min(kBins - 1, static_cast<int>((static_cast<double>(x) - lo) * scale));
    };
    hist.assign(kBins, 0.0);
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

// The truncated law: softmax(logits / T) restricted to the tokens at or above a threshold logit
// (top-k, then top-p of the renormalized top-k distribution; ties at the threshold all kept).
template <typename T>
void masked_sample_truncated_impl(const T* logits, const MaskedSampleParams& p) {
  const int64_t L = p.L, K = p.K, nb = p.num_blocks, n_real = p.V - 1;
  const float inv_t = p.inv_temperature;
  at::parallel_for(0, p.num_masked, 1, [&](int64_t begin, int64_t end) {
    auto buf = std::make_unique<float[]>(p.max_block + kLanes);
    auto e = std::make_unique<float[]>(p.V + kLanes);  // exp((x - block max) / T), by column
    auto block_max_ = std::make_unique<float[]>(nb);
    auto scale = std::make_unique<double[]>(nb);  // exp((block max - row max) / T)
    auto prefix = std::make_unique<double[]>(nb);
    std::vector<float> maxima(nb);
    std::vector<Candidate> cand;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t pos = p.masked[j], b = pos / L, l = pos % L;
      const T* row = logits + b * p.stride_b + l * p.stride_l;
      auto block = [&](int64_t c) { return std::pair{p.block_begin[c], p.block_end[c]}; };

      // One read of the row: each block's max, then its exponentials against that max.
      bool ok = true;
      for (int64_t c = 0; c < nb && ok; ++c) {
        const auto [lo, hi] = block(c);
        const float m = block_max(row + lo, hi - lo);
        ok = !std::isnan(m) && m != kInf;
        block_max_[c] = m;
        if (ok && m != kNegInf) {
          block_exp(row + lo, hi - lo, m, inv_t, e.get() + lo);
        } else {
          std::fill(e.get() + lo, e.get() + hi, 0.f);
        }
      }
      const float row_max = checked_row_max(ok, block_max_.get(), nb, pos, p);
      if (std::isnan(row_max)) continue;
      for (int64_t c = 0; c < nb; ++c)
        scale[c] = block_max_[c] == kNegInf
                       ? 0.0
                       : std::exp((static_cast<double>(block_max_[c]) - row_max) * inv_t);
      // The tokens with lb <= logit < ub (and mass > 0 unless massless_too), from the blocks
      // whose max reaches lb; vectors without one are skipped whole.
      auto collect = [&](float lb, float ub, bool massless_too) {
        cand.clear();
        const Vec vlb(lb), vub(ub);
        for (int64_t c = 0; c < nb; ++c) {
          if (!(block_max_[c] >= lb)) continue;
          const auto [lo, hi] = block(c);
          for (int64_t i0 = lo; i0 < hi; i0 += kLanes) {
            const int64_t m = std::min<int64_t>(kLanes, hi - i0);
            const Vec xv = m == kLanes ? load_vec(row + i0) : load_tail(row + i0, m);
            if (((xv >= vlb) & (xv < vub)).zero_mask() == (1 << kLanes) - 1) continue;
            for (int64_t i = i0; i < i0 + m; ++i) {
              const float x = static_cast<float>(row[i]);
              if (x >= lb && x < ub && (massless_too || e[i] > 0.f))
                cand.push_back({x, e[i] * scale[c]});
            }
          }
        }
      };

      float threshold;
      if (p.top_k > 0) {
        // The k-th largest block max bounds the k-th largest logit from below.
        float lb = kNegInf;
        if (p.top_k <= nb) {
          std::copy(block_max_.get(), block_max_.get() + nb, maxima.begin());
          std::nth_element(maxima.begin(), maxima.begin() + (p.top_k - 1), maxima.end(),
                           std::greater<float>());
          lb = maxima[p.top_k - 1];
        }
        collect(lb, kInf, true);  // at least k tokens: the k block maxima
        std::nth_element(cand.begin(), cand.begin() + (p.top_k - 1), cand.end(),
                         [](const Candidate& a, const Candidate& b) { return a.x > b.x; });
        threshold = cand[p.top_k - 1].x;
        if (p.top_p < 1.0) {
          double mass = 0.0;
          cand.erase(
              std::remove_if(cand.begin(), cand.end(),
                             [&](const Candidate& a) { return a.x < threshold || !(a.w > 0.0); }),
              cand.end());
          for (const Candidate& a : cand) mass += a.w;
          threshold = mass_threshold(cand, 0.0, p.top_p * mass, threshold);
        }
      } else {
        double mass = 0.0;
        for (int64_t c = 0; c < nb; ++c) {
          const auto [lo, hi] = block(c);
          if (scale[c] > 0.0)
            mass += kept_exp_sum(row + lo, e.get() + lo, hi - lo, kNegInf) * scale[c];
        }
        // Every token below lb weighs less than exp((lb - row_max) / T) = (1 - top_p) mass /
        // (2 n_real): together less than half the mass top_p leaves out, so the answer is >= lb.
        const double target = p.top_p * mass;
        float lb = static_cast<float>(row_max + std::log((1.0 - p.top_p) * mass / (2.0 * n_real)) /
                                                    static_cast<double>(inv_t));
        // Narrow [lb, ub) around the answer: the masses at logits >= kProbes points inside it.
        float ub = kInf;
        double above = 0.0;  // mass at logits >= ub
        for (int round = 0; round < 2 && std::isfinite(lb) && row_max > lb; ++round) {
          float t[kProbes];
          double m[kProbes] = {}, part[kProbes];
          const float top = std::min(row_max, ub);
          for (int q = 0; q < kProbes; ++q) t[q] = lb + (top - lb) * (q + 1) / (kProbes + 1);
          for (int64_t c = 0; c < nb; ++c) {
            if (!(block_max_[c] >= t[0]) || scale[c] == 0.0) continue;
            const auto [lo, hi] = block(c);
            probe_exp_sums(row + lo, e.get() + lo, hi - lo, t, part);
            for (int q = 0; q < kProbes; ++q) m[q] += part[q] * scale[c];
          }
          int q = kProbes - 1;
          while (q >= 0 && !(m[q] >= target)) --q;
          if (q + 1 < kProbes) ub = t[q + 1], above = m[q + 1];
          if (q >= 0) lb = t[q];
        }
        collect(lb, ub, false);
        threshold = mass_threshold(cand, above, target, lb);
      }

      // Block masses of the kept tokens; a block whose max is below the threshold keeps none.
      double total = 0.0;
      int64_t last_block = 0;
      for (int64_t c = 0; c < nb; ++c) {
        if (block_max_[c] >= threshold && scale[c] > 0.0) {
          const auto [lo, hi] = block(c);
          const double s = kept_exp_sum(row + lo, e.get() + lo, hi - lo, threshold);
          if (s > 0.0) {
            total += s * scale[c];
            last_block = c;
          }
        }
        prefix[c] = total;
      }

      for (int64_t k = 0; k < K; ++k) {
        const Philox4 u = philox4x32_10(static_cast<uint32_t>(l), static_cast<uint32_t>(k),
                                        static_cast<uint32_t>(b), kTokenStream, p.key);
        const int64_t c = pick_block(prefix.get(), nb, last_block, uniform53(u.w[0], u.w[1]));
        const int64_t lo = p.block_begin[c], n = p.block_end[c] - lo;
        for (int64_t i = 0; i < n; ++i)
          buf[i] = static_cast<float>(row[lo + i]) >= threshold ? e[lo + i] : 0.f;
        const int64_t token = lo + inverse_cdf(buf.get(), n, uniform53(u.w[2], u.w[3]));
        p.tokens[(b * K + k) * L + l] = token;
        // In the kernel's own weights, so a kept set of one token has logp 0 exactly.
        p.logp[(b * K + k) * L + l] =
            static_cast<float>(std::log(static_cast<double>(e[token]) * scale[c] / total));
      }
    }
  });
}

}  // namespace

void masked_sample(const MaskedSampleParams& p) {
  with_logits_type(p.dtype, p.logits, [&](auto* logits) {
    if (p.top_k > 0 || p.top_p < 1.0) {
      masked_sample_truncated_impl(logits, p);
    } else {
      masked_sample_impl(logits, p);
    }
  });
}

}  // namespace edlm::cpu::CPU_CAPABILITY
