// Passes over one row of weights (row_kernels.hpp): the target's weights exp(x - max x), their block sums and
// draws, the masked sum behind a nucleus question, and the nucleus itself. Each has an AVX2 loop where the CPU has
// AVX2 (the build targets baseline x86-64, whose SSE2 loops are several times slower here) and a portable one;
// the weights come out bit for bit the same from both (EVOSPEC_NO_AVX2 runs the portable ones: the tests compare).
#include "row_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "evospec/drafter.hpp"

namespace evospec::detail {

constexpr int FIRST_SHIFT = 20;  // the nucleus's first level: exponent and 3 mantissa bits (probabilities <= 1)
constexpr int FIRST_BINS = 1024;

RowScratch& row_scratch() {
  static thread_local RowScratch s;
  return s;
}

// Whether the AVX2 loops run: where the CPU has AVX2, unless EVOSPEC_NO_AVX2 is set (the tests compare both paths).
static bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && std::getenv("EVOSPEC_NO_AVX2") == nullptr;
#else
  return false;
#endif
}

// Zero the tokens top-p removes from the probabilities w (ascending by probability, then logit, then id, while
// the mass of a token and every one before it is at most the budget); returns the kept mass.
double nucleus(std::vector<float>& w, const float* scaled, double budget) {
  RowScratch& s = row_scratch();
  const int64_t vocab = static_cast<int64_t>(w.size());
  s.keys.resize(vocab);
  double mass[4][FIRST_BINS] = {};
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(w.data());
  for (int64_t v = 0; v < vocab; ++v) {
    uint16_t key = static_cast<uint16_t>(bits[v] >> FIRST_SHIFT);
    s.keys[v] = key;
    mass[v & 3][key] += w[v];
  }
  double whole = 0.0;
  for (int b = 0; b < FIRST_BINS; ++b) whole += (mass[0][b] + mass[1][b]) + (mass[2][b] + mass[3][b]);
  const double limit = budget * whole;
  double below = 0.0;
  int crossing = FIRST_BINS - 1;
  for (int b = 0; b < FIRST_BINS; ++b) {
    double m = (mass[0][b] + mass[1][b]) + (mass[2][b] + mass[3][b]);
    if (below + m > limit) {
      crossing = b;
      break;
    }
    below += m;
  }
  std::vector<int64_t>& window = s.window;
  window.resize(vocab);
  int64_t count = 0;
  for (int64_t v = 0; v < vocab; ++v) {  // branch-free: the crossing bin may hold half the row
    window[count] = v;
    count += s.keys[v] == crossing;
  }
  window.resize(count);
  // then 8, 8 and 4 more bits; the window ends as the tokens of one exact probability (or one token)
  const int shifts[3] = {12, 4, 0};
  const int widths[3] = {8, 8, 4};
  for (int level = 0; level < 3 && window.size() > 1; ++level) {
    const int shift = shifts[level];
    const uint32_t mask = (1u << widths[level]) - 1;
    double sub[256] = {};
    for (int64_t v : window) sub[(bits[v] >> shift) & mask] += w[v];
    uint32_t cross = mask;
    for (uint32_t b = 0; b <= mask; ++b) {
      if (below + sub[b] > limit) {
        cross = b;
        break;
      }
      below += sub[b];
    }
    s.next.clear();
    for (int64_t v : window)
      if (((bits[v] >> shift) & mask) == cross) s.next.push_back(v);
    window.swap(s.next);
  }
  // the crossing tokens in ascending order of logit, then id (as TopPLogitsWarper's stable sort)
  std::stable_sort(window.begin(), window.end(), [&](int64_t a, int64_t b) { return scaled[a] < scaled[b]; });
  // The levels split the bit patterns in order, so every token outside the window has fewer bits than its tokens
  // (removed) or more (kept); a window of one token, or of one exact probability, has the cut's bits.
  const uint32_t cut = bits[window.front()];
  for (int64_t v : window) {
    if (below + w[v] > limit) break;
    below += w[v];
    w[v] = 0.0f;
  }
  float* out = w.data();
  for (int64_t v = 0; v < vocab; ++v) out[v] = bits[v] < cut ? 0.0f : out[v];  // branch-free, vectorises
  return whole - below;
}

double total_of(const std::vector<float>& w) {
  double sums[4] = {0, 0, 0, 0};
  const int64_t vocab = static_cast<int64_t>(w.size());
  int64_t v = 0;
  for (; v + 4 <= vocab; v += 4)
    for (int k = 0; k < 4; ++k) sums[k] += w[v + k];
  for (; v < vocab; ++v) sums[0] += w[v];
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

// exp(x) in float32 for the weights exp(logit - max): Cephes' expf (the polynomial of avx_mathfun), the same
// operations in the scalar and the AVX2 loops (no fused multiply-adds: -ffp-contract=off), so both give the same
// bits; within 2 ulp of exp. Below -87 (and for -inf, a masked token) the weight is 0: e^-87 of the top token.
constexpr float EXP_FLOOR = -87.0f, LOG2E = 1.44269504088896341f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                            5.0000001201e-1f};

static float exp_weight(float x) {
  if (!(x >= EXP_FLOOR)) return 0.0f;
  const float fx = std::floor(x * LOG2E + 0.5f);
  float r = x - fx * LN2_HI;
  r = r - fx * LN2_LO;
  float y = EXP_P[0];
  for (int k = 1; k < 6; ++k) y = y * r + EXP_P[k];
  y = y * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

static float row_max_portable(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < n; ++v) m = x[v] > m ? x[v] : m;
  return m;
}

// w = exp(x - top), and the cumulative float64 sums of its blocks of SAMPLE_BLOCK (the last one: the total).
static void exp_blocks_portable(const float* x, int64_t n, float top, float* w, double* cumulative, double running) {
  for (int64_t start = 0, b = 0; start < n; start += SAMPLE_BLOCK, ++b) {
    const int64_t end = std::min(n, start + SAMPLE_BLOCK);
    double sums[4] = {0, 0, 0, 0};
    for (int64_t v = start; v < end; ++v) {
      w[v] = exp_weight(x[v] - top);
      sums[(v - start) & 3] += w[v];
    }
    running += (sums[0] + sums[1]) + (sums[2] + sums[3]);
    cumulative[b] = running;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
static __attribute__((target("avx2"))) float row_max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t v = 0;
  for (; v + 8 <= n; v += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + v));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float top = row_max_portable(x + v, n - v);
  for (float lane : lanes) top = lane > top ? lane : top;
  return top;
}

// exp_blocks_portable, 8 weights a step: the same operations in the same order for each weight; the block sums
// add in another order (rounding only).
static __attribute__((target("avx2"))) void exp_blocks_avx2(const float* x, int64_t n, float top, float* w,
                                                      double* cumulative, double running) {
  const __m256 floor_ = _mm256_set1_ps(EXP_FLOOR), log2e = _mm256_set1_ps(LOG2E), half = _mm256_set1_ps(0.5f),
               hi = _mm256_set1_ps(LN2_HI), lo = _mm256_set1_ps(LN2_LO), one = _mm256_set1_ps(1.0f),
               shift = _mm256_set1_ps(top);
  const __m256i bias = _mm256_set1_epi32(127);
  for (int64_t start = 0, b = 0; start < n; start += SAMPLE_BLOCK, ++b) {
    const int64_t end = std::min(n, start + SAMPLE_BLOCK);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t v = start;
    for (; v + 8 <= end; v += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + v), shift);
      __m256 valid = _mm256_cmp_ps(d, floor_, _CMP_GE_OQ);
      __m256 fx = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(d, log2e), half));
      __m256 r = _mm256_sub_ps(d, _mm256_mul_ps(fx, hi));
      r = _mm256_sub_ps(r, _mm256_mul_ps(fx, lo));
      __m256 y = _mm256_set1_ps(EXP_P[0]);
      for (int k = 1; k < 6; ++k) y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(EXP_P[k]));
      y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_mul_ps(r, r)), r), one);
      // fx of an invalid lane may be anything: the lane is masked to 0 below
      __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(_mm256_max_ps(fx, _mm256_set1_ps(-126.0f))), bias), 23);
      __m256 e = _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(bits)), valid);
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
    running += sum;
    cumulative[b] = running;
  }
}
#endif

// The row's weights exp(x - max x) (the softmax up to its total) into w, and their block sums: two passes.
void exp_weights(const float* x, int64_t n, std::vector<float>& w, std::vector<double>& cumulative) {
  w.resize(n);
  cumulative.resize((n + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK);
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = use_avx2();
  if (avx2) {
    const float top = row_max_avx2(x, n);
    if (!std::isfinite(top)) throw SettingsError("a row of the target's logits has no finite maximum (NaN or inf)");
    return exp_blocks_avx2(x, n, top, w.data(), cumulative.data(), 0.0);
  }
#endif
  const float top = row_max_portable(x, n);
  if (!std::isfinite(top)) throw SettingsError("a row of the target's logits has no finite maximum (NaN or inf)");
  exp_blocks_portable(x, n, top, w.data(), cumulative.data(), 0.0);
}

// Cumulative float64 sums of blocks of SAMPLE_BLOCK weights (the last one holds the total).
void block_cumulative(const std::vector<float>& w, std::vector<double>& cumulative) {
  const int64_t vocab = static_cast<int64_t>(w.size());
  cumulative.resize((vocab + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK);
  double running = 0.0;
  for (size_t b = 0; b < cumulative.size(); ++b) {
    double sums[4] = {0, 0, 0, 0};
    const int64_t start = static_cast<int64_t>(b) * SAMPLE_BLOCK, end = std::min(vocab, start + SAMPLE_BLOCK);
    int64_t v = start;
    for (; v + 4 <= end; v += 4)
      for (int k = 0; k < 4; ++k) sums[k] += w[v + k];
    for (; v < end; ++v) sums[0] += w[v];
    running += (sums[0] + sums[1]) + (sums[2] + sums[3]);
    cumulative[b] = running;
  }
}

// The first token whose cumulative weight exceeds u x the total (a zero weight is never drawn): the block first,
// then inside it; where rounding puts the goal at the total, the last token with weight.
int64_t draw_blocks(const std::vector<float>& w, const std::vector<double>& cumulative, double u) {
  const double goal = u * cumulative.back();
  size_t b = std::upper_bound(cumulative.begin(), cumulative.end(), goal) - cumulative.begin();
  const int64_t vocab = static_cast<int64_t>(w.size());
  if (b < cumulative.size()) {
    double running = b > 0 ? cumulative[b - 1] : 0.0;
    const int64_t start = static_cast<int64_t>(b) * SAMPLE_BLOCK, end = std::min(vocab, start + SAMPLE_BLOCK);
    for (int64_t v = start; v < end; ++v) {
      running += w[v];
      if (w[v] > 0.0f && running > goal) return v;
    }
  }
  for (int64_t v = vocab - 1; v >= 0; --v)
    if (w[v] > 0.0f) return v;
  throw std::runtime_error("a draw from weights with no mass; this is a bug");
}

// The float64 mass of the weights below s, and how many equal s: the pass behind each nucleus question.
static void mass_below_portable(const float* p, int64_t n, float s, double& below, int64_t& ties) {
  double sums[4] = {0, 0, 0, 0};
  int64_t equal[4] = {0, 0, 0, 0};
  int64_t v = 0;
  for (; v + 4 <= n; v += 4)
    for (int k = 0; k < 4; ++k) {
      sums[k] += p[v + k] < s ? p[v + k] : 0.0f;
      equal[k] += p[v + k] == s;
    }
  for (; v < n; ++v) {
    sums[0] += p[v] < s ? p[v] : 0.0f;
    equal[0] += p[v] == s;
  }
  below = (sums[0] + sums[1]) + (sums[2] + sums[3]);
  ties = equal[0] + equal[1] + equal[2] + equal[3];
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same with AVX2, where the CPU has it (the build targets baseline x86-64, whose SSE2 loop is ~6x slower
// here): 8 floats a step, masked, widened to float64 and summed in four accumulators (the sum's order differs
// from the portable loop's by rounding only, far inside the bounds' SUM_SLACK).
static __attribute__((target("avx2"))) void mass_below_avx2(const float* p, int64_t n, float s, double& below,
                                                     int64_t& ties) {
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
  double rest = 0.0;
  int64_t rest_ties = 0;
  mass_below_portable(p + v, n - v, s, rest, rest_ties);
  below = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + rest;
  ties = equal + rest_ties;
}
#endif

void mass_below(const float* p, int64_t n, float s, double& below, int64_t& ties) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = use_avx2();
  if (avx2) return mass_below_avx2(p, n, s, below, ties);
#endif
  mass_below_portable(p, n, s, below, ties);
}

}  // namespace evospec::detail
