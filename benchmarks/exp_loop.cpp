// Stand-alone loop of the CPU kernels' row-pass arithmetic (max + exp + accumulate, blocks of 512)
// over 1024 rows of 50258 fp32 logits (206 MB), 2 OpenMP threads, against the floor of a plain sum
// over the same memory: ATen's exp_u20 against edlm's exp_fast, without and with the 2 KB prefetch.
// Interleaved rounds, median of 25. Not part of the build or the tests; BENCHMARKS.md quotes it.
//   T=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))")/include
//   g++ -O3 -mavx2 -mfma -mf16c -fopenmp -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 \
//       -I csrc -I $T benchmarks/exp_loop.cpp -o /tmp/exp_loop && /tmp/exp_loop
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/vec_common.h"

namespace k = edlm::cpu::CPU_CAPABILITY;
using k::Vec;

enum Mode { kFloor, kU20, kFast };

template <Mode M>
double row(const float* x, long n, bool prefetch) {
  double total = 0;
  const Vec vr(10.f), vt(1.f);
  for (long s = 0; s < n; s += 512) {
    const long e = std::min(n, s + 512);
    Vec m0(k::kNegInf), m1(k::kNegInf), a0(0.f), a1(0.f);
    long i = s;
    for (; i + 16 <= e; i += 16) {
      if (prefetch) k::prefetch_ahead(x + i);
      const Vec a = Vec::loadu(x + i), b = Vec::loadu(x + i + 8);
      if (M == kFloor) {
        a0 = a0 + a;
        a1 = a1 + b;
        continue;
      }
      m0 = at::vec::maximum(m0, a);
      m1 = at::vec::maximum(m1, b);
      if (M == kU20) {
        a0 = a0 + ((a - vr) * vt).exp_u20();
        a1 = a1 + ((b - vr) * vt).exp_u20();
      } else {
        a0 = a0 + k::exp_fast((a - vr) * vt);
        a1 = a1 + k::exp_fast((b - vr) * vt);
      }
    }
    total += k::reduce_sum_double(a0 + a1) + 1e-30 * k::reduce_max(at::vec::maximum(m0, m1));
  }
  return total;
}

int main() {
  const long R = 1024, V = 50258;
  std::vector<float> buf(R * V);
  std::mt19937 g(0);
  std::normal_distribution<float> d(0.f, 2.5f);
  for (float& v : buf) v = d(g);
  omp_set_num_threads(2);
  struct Variant {
    const char* name;
    Mode mode;
    bool prefetch;
  };
  const std::vector<Variant> variants = {{"floor (sum)", kFloor, false},
                                         {"exp_u20", kU20, false},
                                         {"exp_fast", kFast, false},
                                         {"exp_fast + prefetch", kFast, true}};
  std::vector<std::vector<double>> t(variants.size());
  double sink = 0;
  for (int round = 0; round < 25; ++round) {
    for (size_t v = 0; v < variants.size(); ++v) {
      const Variant var = variants[v];
      const auto t0 = std::chrono::steady_clock::now();
      double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
      for (long r = 0; r < R; ++r) {
        const float* x = buf.data() + r * V;
        s += var.mode == kFloor  ? row<kFloor>(x, V, var.prefetch)
             : var.mode == kU20 ? row<kU20>(x, V, var.prefetch)
                                : row<kFast>(x, V, var.prefetch);
      }
      t[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      sink += s;
    }
  }
  for (auto& v : t) std::sort(v.begin(), v.end());
  for (size_t v = 0; v < variants.size(); ++v)
    std::printf("%-22s median %6.2f ms  %.2fx the floor\n", variants[v].name, t[v][12] * 1e3,
                t[v][12] / t[0][12]);
  return sink == 0.12345;
}
