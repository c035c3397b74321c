// Speculative sampling verification of one step in C++ (C ABI evospec_verify_sampled; Python:
// runtime/native_verify.py): Python's verify_sampling and TargetRow (runtime/verify.py, runtime/target_law.py)
// decision for decision, over the same law: temperature in float32, ATen's softmax, the top-p nucleus (a token
// is removed while the mass of it and every less likely token is at most (1 - top_p) of the total; ties by
// logit, then id), each node's children tried in draft order by recursive rejection (accept x when
// u q(x) K < w(x), else w <- max(w - K q, 0)), and the bonus token drawn from what is left.
//
// Why here: Python's verifier costs ~0.5 ms a visited row of 151k tokens at T = 1 in numpy and torch calls,
// most of a sampled step's time outside the model forwards. Here a row costs the softmax, one pass of block
// sums, and one masked-sum pass per nucleus question; as in Python, the nucleus itself (``nucleus``: a radix
// select on the probabilities' bits) is built only when the bounds leave a decision open (target_law.py says
// why each bound holds). The caller supplies the uniform numbers (nodes + 8 always suffice: one per tested
// child, at most 2 x DRAW_ATTEMPTS + 1 for the bonus token).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "evospec/drafter.hpp"
#include "verify.hpp"

namespace evospec::detail {

namespace {

constexpr double SUM_SLACK = 1e-9;  // of a row's total: two float64 sums of it in different orders differ by less
constexpr int DRAW_ATTEMPTS = 3;    // proposals from the softmax before the bonus is drawn from the exact law
constexpr int64_t SAMPLE_BLOCK = 1024;
constexpr int FIRST_SHIFT = 20;  // the nucleus's first level: exponent and 3 mantissa bits (probabilities <= 1)
constexpr int FIRST_BINS = 1024;
enum Answer { NO = 0, YES = 1, UNKNOWN = -1 };

// Row-sized work buffers, reused from row to row: a fresh 600 kB vector is fresh pages from the kernel.
struct Scratch {
  std::vector<float> scaled, w;
  std::vector<uint16_t> keys;
  std::vector<int64_t> window, next;
  std::vector<double> blocks, fresh_blocks;
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

// Whether the AVX2 loops run: where the CPU has AVX2, unless EVOSPEC_NO_AVX2 is set (the tests compare both paths).
bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && std::getenv("EVOSPEC_NO_AVX2") == nullptr;
#else
  return false;
#endif
}

// Zero the tokens top-p removes from the probabilities w (ascending by probability, then logit, then id, while
// the mass of a token and every one before it is at most the budget); returns the kept mass.
double nucleus(std::vector<float>& w, const float* scaled, double budget) {
  Scratch& s = scratch();
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

float exp_weight(float x) {
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

float row_max_portable(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < n; ++v) m = x[v] > m ? x[v] : m;
  return m;
}

// w = exp(x - top), and the cumulative float64 sums of its blocks of SAMPLE_BLOCK (the last one: the total).
void exp_blocks_portable(const float* x, int64_t n, float top, float* w, double* cumulative, double running) {
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
__attribute__((target("avx2"))) float row_max_avx2(const float* x, int64_t n) {
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
__attribute__((target("avx2"))) void exp_blocks_avx2(const float* x, int64_t n, float top, float* w,
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
void mass_below_portable(const float* p, int64_t n, float s, double& below, int64_t& ties) {
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
__attribute__((target("avx2"))) void mass_below_avx2(const float* p, int64_t n, float s, double& below,
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

void mass_below_row(const float* p, int64_t n, float s, double& below, int64_t& ties) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = use_avx2();
  if (avx2) return mass_below_avx2(p, n, s, below, ties);
#endif
  mass_below_portable(p, n, s, below, ties);
}

struct Uniforms {
  const double* values;
  int64_t count, used = 0;
  double next() {
    if (used >= count)
      throw SettingsError("verification needs more than the " + std::to_string(count) + " uniforms given");
    double u = values[used++];
    if (!(u >= 0.0 && u < 1.0)) throw SettingsError("a uniform outside [0, 1): " + std::to_string(u));
    return u;
  }
};

// The drafter's law at one child: a point mass at its token (laws == nullptr), q over the vocabulary
// (columns == nullptr) or q over the head's columns (a padded set repeats id 0 with q = 0: columns add up).
struct Proposal {
  int64_t token;
  const double* q;
  const int64_t* columns;
  int64_t width;

  double mass(int64_t y) const {
    if (q == nullptr) return y == token ? 1.0 : 0.0;
    if (columns == nullptr) return q[y];
    double m = 0.0;
    for (int64_t c = 0; c < width; ++c)
      if (columns[c] == y) m += q[c];
    return m;
  }

  // w <- max(w - total q, 0), in place (the residual after this child's rejection), in float32 as Python's
  // numpy and index_add_ compute it (q is a float32 law; the total rounds to float32 first).
  void subtract(std::vector<float>& w, double total) const {
    const float k = static_cast<float>(total);
    if (q == nullptr) {
      w[token] = 0.0f;
    } else if (columns == nullptr) {
      for (size_t v = 0; v < w.size(); ++v) w[v] = std::max(w[v] - static_cast<float>(q[v]) * k, 0.0f);
    } else {
      for (int64_t c = 0; c < width; ++c) w[columns[c]] += -k * static_cast<float>(q[c]);
      for (int64_t c = 0; c < width; ++c) w[columns[c]] = std::max(w[columns[c]], 0.0f);
    }
  }
};

// Python's TargetRow: the softmax first, the nucleus only when a decision needs it.
class TargetRow {
 public:
  double total;  // of the softmax; once the weights are built, of the law (kept in step by the caller)

  TargetRow(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p)
      : w_(scratch().w), cumulative_(scratch().blocks) {
    Scratch& s = scratch();
    scaled_ = logits;
    if (stride != 1 || temperature != 1.0) {  // contiguous, divided as numpy divides float32 by a Python float
      s.scaled.resize(vocab);
      const float t = static_cast<float>(temperature);
      if (temperature == 1.0)
        for (int64_t v = 0; v < vocab; ++v) s.scaled[v] = logits[v * stride];
      else
        for (int64_t v = 0; v < vocab; ++v) s.scaled[v] = logits[v * stride] / t;
      scaled_ = s.scaled.data();
    }
    exp_weights(scaled_, vocab, w_, cumulative_);
    total = cumulative_.back();
    budget_ = 1.0 - top_p;
    filtered_ = top_p >= 1.0;
    limit_ = budget_ * total;
    margin_ = SUM_SLACK * total;
    kept_high_ = total + margin_;
    kept_low_ = total - limit_ - 2 * margin_;
  }

  // The exact test threshold K < w(x) on the untouched law, or UNKNOWN where the bounds do not settle it.
  Answer decide(int64_t x, double threshold) {
    if (filtered_) return threshold * weights_total() < w_[x] ? YES : NO;
    Answer kept = in_nucleus(x);
    if (kept == NO) return NO;
    if (kept == YES) {
      const double s = w_[x];
      if (threshold * kept_high_ < s) return YES;
      if (threshold * kept_low_ >= s) return NO;
    }
    return UNKNOWN;
  }

  // One token from the law, or, after ``rejected`` (tested against the untouched law) was rejected, from the
  // residual max(w - K q, 0): by rejection from the softmax while the bounds decide, else from the exact law.
  int64_t draw(Uniforms& u, const Proposal* rejected) {
    if (!filtered_) {
      for (int attempt = 0; attempt < DRAW_ATTEMPTS; ++attempt) {
        const int64_t y = draw_blocks(w_, cumulative_, u.next());
        const double v = u.next(), q = rejected == nullptr ? 0.0 : rejected->mass(y);
        Answer keep = keeps_draw(y, v, q);
        if (keep == UNKNOWN) {  // settled on the exact law for this proposal (a fresh draw would bias the law)
          const double s = w_[y];
          weights();
          if (v * s < std::max(static_cast<double>(w_[y]) - total * q, 0.0)) return y;
          break;
        }
        if (keep == YES) return y;
      }
    }
    weights();
    if (rejected != nullptr) rejected->subtract(w_, total);
    return sample(u);
  }

  // The law's weights (the nucleus built in place: the softmax is not read again); ``total`` becomes their sum.
  std::vector<float>& weights() {
    if (!filtered_) {
      total = nucleus(w_, scaled_, budget_);
      filtered_ = true;
    }
    return w_;
  }

  // One token from the weights as they are (residuals included).
  int64_t sample(Uniforms& u) {
    block_cumulative(w_, scratch().fresh_blocks);
    return draw_blocks(w_, scratch().fresh_blocks, u.next());
  }

 private:
  double weights_total() {
    weights();
    return total;
  }

  Answer keeps_draw(int64_t y, double v, double q) {
    Answer kept = in_nucleus(y);
    if (kept != YES) return kept;
    const double s = w_[y];
    if (v * s < s - kept_high_ * q) return YES;
    if (v * s >= s - kept_low_ * q) return NO;
    return UNKNOWN;
  }

  // Kept when the mass of y and every token below it exceeds the limit (ties: between below + s and
  // below + ties x s); each answer also settles every token more likely (kept) or less likely (removed).
  Answer in_nucleus(int64_t y) {
    const float s = w_[y];
    if (s > kept_from_ || s > limit_ + margin_) return kept(s);
    if (s < removed_below_) return NO;
    double below = 0.0;
    int64_t ties = 0;
    mass_below(s, below, ties);
    if (below + s > limit_ + margin_) return kept(s);
    if (below + static_cast<double>(ties) * s < limit_ - margin_) {
      removed_below_ = std::max(removed_below_, static_cast<double>(s));
      return NO;
    }
    return UNKNOWN;
  }

  Answer kept(double s) {
    if (s < kept_from_) {
      kept_from_ = s;
      kept_high_ = std::min(kept_high_, total - limit_ + s + 3 * margin_);
    }
    return YES;
  }

  void mass_below(float s, double& below, int64_t& ties) const {
    mass_below_row(w_.data(), static_cast<int64_t>(w_.size()), s, below, ties);
  }

  std::vector<float>& w_;  // the softmax, then the law's weights
  std::vector<double>& cumulative_;  // the softmax's block sums
  const float* scaled_;
  double budget_, limit_, margin_, kept_high_, kept_low_;
  double kept_from_ = std::numeric_limits<double>::infinity();
  double removed_below_ = -std::numeric_limits<double>::infinity();
  bool filtered_;
};

}  // namespace

double sampling_weights(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p,
                        float* weights) {
  TargetRow row(logits, vocab, stride, temperature, top_p);
  const std::vector<float>& w = row.weights();
  std::copy(w.begin(), w.end(), weights);
  return top_p >= 1.0 ? total_of(w) : row.total;
}

SampledVerdict verify_sampled(const SampledStep& step) {
  const int64_t n = step.nodes;
  std::vector<std::vector<int64_t>> children(n + 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t parent = step.parents[i];
    if (parent < -1 || parent >= i)
      throw SettingsError("node " + std::to_string(i) + " has parent " + std::to_string(parent) +
                          " (a parent comes before its child)");
    if (step.tokens[i] < 0 || step.tokens[i] >= step.vocab)
      throw SettingsError("node " + std::to_string(i) + " drafts token " + std::to_string(step.tokens[i]) +
                          ", outside the target's vocabulary of " + std::to_string(step.vocab));
    children[parent + 1].push_back(i);
  }
  if (step.laws != nullptr && step.columns != nullptr)
    for (int64_t c = 0; c < step.law_columns; ++c)
      if (step.columns[c] < 0 || step.columns[c] >= step.vocab)
        throw SettingsError("law column " + std::to_string(c) + " is token " + std::to_string(step.columns[c]) +
                            ", outside the target's vocabulary");
  Uniforms u{step.uniforms, step.uniform_count};
  SampledVerdict verdict;
  int64_t row = 0;
  while (true) {
    TargetRow law(step.logits + row * step.row_stride, step.vocab, step.vocab_stride, step.temperature, step.top_p);
    const std::vector<int64_t>& kids = children[row];
    int64_t taken = -1;
    for (size_t index = 0; index < kids.size() && taken < 0; ++index) {
      const int64_t child = kids[index], x = step.tokens[child];
      const Proposal proposal{x, step.laws == nullptr ? nullptr : step.laws + child * step.law_columns, step.columns,
                              step.law_columns};
      const double threshold = u.next() * proposal.mass(x);
      if (index == 0) {  // the untouched law: the bounds may decide without the nucleus
        Answer decided = law.decide(x, threshold);
        if (decided == YES) {
          taken = child;
          break;
        }
        if (decided == NO && kids.size() == 1) {
          verdict.bonus = law.draw(u, &proposal);
          verdict.uniforms_used = u.used;
          return verdict;
        }
      }
      std::vector<float>& w = law.weights();
      if (threshold * law.total < w[x]) {
        taken = child;
        break;
      }
      proposal.subtract(w, law.total);
      law.total = total_of(w);
      if (!(law.total > 0)) throw std::runtime_error("speculative sampling residual has no mass; this is a bug");
    }
    if (taken < 0) {
      verdict.bonus = kids.empty() ? law.draw(u, nullptr) : law.sample(u);
      verdict.uniforms_used = u.used;
      return verdict;
    }
    verdict.accepted.push_back(taken);
    row = taken + 1;
  }
}

}  // namespace evospec::detail
