// AVX2 and AVX-512 loops of the verifier's row passes (row_kernels_x86.hpp says why). Each does per element the
// operations of its portable loop in row_kernels.cpp in the same order, so the weights have the same bits; only
// float64 sums add in another order (rounding, far inside the bounds' SUM_SLACK).
#include "row_kernels_x86.hpp"

#ifdef EVOSPEC_X86_KERNELS
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "row_exp.hpp"
#include "row_kernels.hpp"

namespace evospec::detail::x86 {

Isa isa() {
  static const Isa chosen = [] {
    if (std::getenv("EVOSPEC_NO_AVX2") != nullptr || !__builtin_cpu_supports("avx2")) return Isa::portable;
    if (std::getenv("EVOSPEC_NO_AVX512") == nullptr && __builtin_cpu_supports("avx512f")) return Isa::avx512;
    return Isa::avx2;
  }();
  return chosen;
}

namespace {

float max_tail(const float* x, int64_t n, float top) {
  for (int64_t v = 0; v < n; ++v) top = x[v] > top ? x[v] : top;
  return top;
}

void mass_tail(const float* p, int64_t n, float s, double& below, int64_t& ties) {
  for (int64_t v = 0; v < n; ++v) {
    below += p[v] < s ? p[v] : 0.0f;
    ties += p[v] == s;
  }
}

}  // namespace

__attribute__((target("avx2"))) float row_max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t v = 0;
  for (; v + 8 <= n; v += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + v));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float top = max_tail(x + v, n - v, -std::numeric_limits<float>::infinity());
  for (float lane : lanes) top = lane > top ? lane : top;
  return top;
}

__attribute__((target("avx512f"))) float row_max_avx512(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t v = 0;
  for (; v + 16 <= n; v += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + v));
  return max_tail(x + v, n - v, _mm512_reduce_max_ps(m));
}

// Cephes' expf on 8 lanes, as exp_weight: d >= EXP_FLOOR, else 0.
__attribute__((target("avx2"))) static inline __m256 exp8(__m256 d) {
  const __m256 valid = _mm256_cmp_ps(d, _mm256_set1_ps(EXP_FLOOR), _CMP_GE_OQ);
  const __m256 fx = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(d, _mm256_set1_ps(LOG2E)), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_sub_ps(d, _mm256_mul_ps(fx, _mm256_set1_ps(LN2_HI)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(fx, _mm256_set1_ps(LN2_LO)));
  __m256 y = _mm256_set1_ps(EXP_P[0]);
  for (int k = 1; k < 6; ++k) y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(EXP_P[k]));
  y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
  // fx of an invalid lane may be anything: the lane is masked to 0
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvttps_epi32(_mm256_max_ps(fx, _mm256_set1_ps(-126.0f))), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(bits)), valid);
}

// The same on 16 lanes.
__attribute__((target("avx512f"))) static inline __m512 exp16(__m512 d) {
  const __mmask16 valid = _mm512_cmp_ps_mask(d, _mm512_set1_ps(EXP_FLOOR), _CMP_GE_OQ);
  const __m512 fx = _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(d, _mm512_set1_ps(LOG2E)), _mm512_set1_ps(0.5f)),
                                         _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(d, _mm512_mul_ps(fx, _mm512_set1_ps(LN2_HI)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(fx, _mm512_set1_ps(LN2_LO)));
  __m512 y = _mm512_set1_ps(EXP_P[0]);
  for (int k = 1; k < 6; ++k) y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(EXP_P[k]));
  y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(y, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvttps_epi32(_mm512_max_ps(fx, _mm512_set1_ps(-126.0f))), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(valid, _mm512_mul_ps(y, _mm512_castsi512_ps(bits)));
}

__attribute__((target("avx2"))) void exp_blocks_avx2(const float* x, int64_t n, float top, float* w,
                                                     double* sums) {
  const __m256 shift = _mm256_set1_ps(top);
  for (int64_t start = 0, b = 0; start < n; start += SAMPLE_BLOCK, ++b) {
    const int64_t end = std::min(n, start + SAMPLE_BLOCK);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t v = start;
    for (; v + 8 <= end; v += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + v), shift));
      _mm256_storeu_ps(w + v, e);
      s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
      s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; v < end; ++v) {
      w[v] = exp_weight(x[v] - top);
      sum += w[v];
    }
    sums[b] = sum;
  }
}

__attribute__((target("avx512f"))) void exp_blocks_avx512(const float* x, int64_t n, float top, float* w,
                                                          double* sums) {
  const __m512 shift = _mm512_set1_ps(top);
  for (int64_t start = 0, b = 0; start < n; start += SAMPLE_BLOCK, ++b) {
    const int64_t end = std::min(n, start + SAMPLE_BLOCK);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int64_t v = start;
    for (; v + 16 <= end; v += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), shift));
      _mm512_storeu_ps(w + v, e);
      s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
      s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (; v < end; ++v) {
      w[v] = exp_weight(x[v] - top);
      sum += w[v];
    }
    sums[b] = sum;
  }
}

__attribute__((target("avx2"))) void mass_below_avx2(const float* p, int64_t n, float s, double& below, int64_t& ties) {
  const __m256 limit = _mm256_set1_ps(s);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
  int64_t equal = 0, v = 0;
  for (; v + 16 <= n; v += 16) {
    __m256 x = _mm256_loadu_ps(p + v), y = _mm256_loadu_ps(p + v + 8);
    __m256 mx = _mm256_and_ps(x, _mm256_cmp_ps(x, limit, _CMP_LT_OQ));
    __m256 my = _mm256_and_ps(y, _mm256_cmp_ps(y, limit, _CMP_LT_OQ));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(mx)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(mx, 1)));
    a2 = _mm256_add_pd(a2, _mm256_cvtps_pd(_mm256_castps256_ps128(my)));
    a3 = _mm256_add_pd(a3, _mm256_cvtps_pd(_mm256_extractf128_ps(my, 1)));
    equal += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(x, limit, _CMP_EQ_OQ))) +
             __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(y, limit, _CMP_EQ_OQ)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
  below = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  ties = equal;
  mass_tail(p + v, n - v, s, below, ties);
}

__attribute__((target("avx512f"))) void mass_below_avx512(const float* p, int64_t n, float s, double& below,
                                                          int64_t& ties) {
  const __m512 limit = _mm512_set1_ps(s);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t equal = 0, v = 0;
  for (; v + 16 <= n; v += 16) {
    const __m512 x = _mm512_loadu_ps(p + v);
    const __m512 m = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, limit, _CMP_LT_OQ), x);
    a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(m)));
    a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(m), 1))));
    equal += __builtin_popcount(_mm512_cmp_ps_mask(x, limit, _CMP_EQ_OQ));
  }
  below = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  ties = equal;
  mass_tail(p + v, n - v, s, below, ties);
}

__attribute__((target("avx2"))) bool gather_at_least_avx2(const float* w, int64_t n, float p, int64_t cap,
                                                          std::vector<int64_t>& window) {
  const __m256 pivot = _mm256_set1_ps(p);
  int64_t v = 0;
  for (; v + 8 <= n; v += 8) {
    unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(w + v), pivot, _CMP_GE_OQ)));
    for (; bits != 0; bits &= bits - 1) {
      if (static_cast<int64_t>(window.size()) >= cap) return false;
      window.push_back(v + __builtin_ctz(bits));
    }
  }
  for (; v < n; ++v)
    if (w[v] >= p) {
      if (static_cast<int64_t>(window.size()) >= cap) return false;
      window.push_back(v);
    }
  return true;
}

__attribute__((target("avx2"))) double column_mass_avx2(const int64_t* columns, const double* q, int64_t width,
                                                        int64_t y) {
  const __m256i token = _mm256_set1_epi64x(y);
  __m256d sum = _mm256_setzero_pd();
  int64_t c = 0;
  for (; c + 4 <= width; c += 4) {
    const __m256i hit = _mm256_cmpeq_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(columns + c)), token);
    sum = _mm256_add_pd(sum, _mm256_and_pd(_mm256_loadu_pd(q + c), _mm256_castsi256_pd(hit)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, sum);
  double m = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; c < width; ++c)
    if (columns[c] == y) m += q[c];
  return m;
}

// score[i] += sum over j of m[j * c + i] * x[j], j in order, one multiply and one add each (the portable loop's
// operations lane by lane: the same bits).
__attribute__((target("avx512f"))) void column_dots_avx512(const float* m, const float* x, int64_t d, int64_t c,
                                                           float* score) {
  int64_t i = 0;
  for (; i + 64 <= c; i += 64) {  // four vectors of clusters at a time: each centre column read once per j
    __m512 a0 = _mm512_loadu_ps(score + i), a1 = _mm512_loadu_ps(score + i + 16);
    __m512 a2 = _mm512_loadu_ps(score + i + 32), a3 = _mm512_loadu_ps(score + i + 48);
    for (int64_t j = 0; j < d; ++j) {
      const float* column = m + j * c + i;
      const __m512 xj = _mm512_set1_ps(x[j]);
      a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_loadu_ps(column), xj));
      a1 = _mm512_add_ps(a1, _mm512_mul_ps(_mm512_loadu_ps(column + 16), xj));
      a2 = _mm512_add_ps(a2, _mm512_mul_ps(_mm512_loadu_ps(column + 32), xj));
      a3 = _mm512_add_ps(a3, _mm512_mul_ps(_mm512_loadu_ps(column + 48), xj));
    }
    _mm512_storeu_ps(score + i, a0);
    _mm512_storeu_ps(score + i + 16, a1);
    _mm512_storeu_ps(score + i + 32, a2);
    _mm512_storeu_ps(score + i + 48, a3);
  }
  for (; i < c; ++i)
    for (int64_t j = 0; j < d; ++j) score[i] += m[j * c + i] * x[j];
}

}  // namespace evospec::detail::x86
#endif
