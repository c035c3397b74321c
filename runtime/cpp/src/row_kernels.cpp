// Passes over one row of weights (row_kernels.hpp): the target's weights exp(x - max x), their block sums and
// draws, the masked sum behind a nucleus question, and the nucleus itself. The passes over the whole row have
// AVX2 and AVX-512 loops (row_kernels_x86.cpp) and the portable ones here; the weights come out bit for bit the
// same from each (EVOSPEC_NO_AVX512, EVOSPEC_NO_AVX2 choose the narrower paths: the tests compare).
#include "row_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "evospec/drafter.hpp"
#include "row_exp.hpp"
#include "row_kernels_x86.hpp"
#include "row_threads.hpp"

namespace evospec::detail {

constexpr int FIRST_SHIFT = 20;  // the nucleus's first level: exponent and 3 mantissa bits (probabilities <= 1)
constexpr int FIRST_BINS = 1024;

RowScratch& row_scratch() {
  static thread_local RowScratch s;
  return s;
}

#ifdef EVOSPEC_X86_KERNELS
using x86::Isa;
#endif

// The nucleus starts from a window of tokens that holds its cut, with the mass of every token below the window:
// either the tokens at or above a power-of-two pivot whose mass below is within the budget (every token under the
// pivot is removed; no histogram of the whole row), or the crossing bin of a histogram of the whole row.
constexpr int PIVOTS = 12;          // pivots 2^-2, 2^-4, ..., 2^-24 of the top weight (1)
constexpr int64_t WINDOW_SHARE = 2;  // a pivot's window may hold at most half the row, else the histogram

// Whether the radix select starts from the whole row (EVOSPEC_NUCLEUS_HISTOGRAM: the tests compare both starts).
static bool histogram_only() { return std::getenv("EVOSPEC_NUCLEUS_HISTOGRAM") != nullptr; }

// The indices of the weights at or above p into window (at most cap of them); false when there are more.
static bool gather_at_least(const float* w, int64_t n, float p, int64_t cap, std::vector<int64_t>& window) {
  window.clear();
#ifdef EVOSPEC_X86_KERNELS
  if (x86::isa() != Isa::portable) return x86::gather_at_least_avx2(w, n, p, cap, window);
#endif
  for (int64_t v = 0; v < n; ++v)
    if (w[v] >= p) {
      if (static_cast<int64_t>(window.size()) >= cap) return false;
      window.push_back(v);
    }
  return true;
}

// A window above a pivot: the highest pivot whose mass below is at most the limit (every token under it removed),
// if its tokens are at most half the row; ``below`` gets that mass. The search starts at the pivot the thread's
// last row found (a sequence's rows are alike: one or two passes).
static bool pivot_window(const std::vector<float>& w, double limit, std::vector<int64_t>& window, double& below) {
  static thread_local int last = 2;
  const int64_t n = static_cast<int64_t>(w.size());
  auto within = [&](int k, double& mass) {  // whether every token under 2^-2k is removed
    int64_t ties = 0;
    mass_below(w.data(), n, std::ldexp(1.0f, -2 * k), mass, ties);
    return mass <= limit;
  };
  double mass = 0.0, higher = 0.0;
  int k = last;
  if (within(k, mass)) {  // masses below grow with the pivot: go up while within
    while (k > 1 && within(k - 1, higher)) {
      --k;
      mass = higher;
    }
  } else {
    do {
      if (++k > PIVOTS) return false;
    } while (!within(k, mass));
  }
  last = k;
  below = mass;
  window.reserve(n);
  return gather_at_least(w.data(), n, std::ldexp(1.0f, -2 * k), n / WINDOW_SHARE, window);
}

// The whole row's first level: a histogram of the mass by exponent and 3 mantissa bits; the window is the bin
// where the running mass crosses the limit, ``below`` the mass of the bins under it.
static void histogram_window(const std::vector<float>& w, double limit, std::vector<int64_t>& window, double& below) {
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
  below = 0.0;
  int crossing = FIRST_BINS - 1;
  for (int b = 0; b < FIRST_BINS; ++b) {
    double m = (mass[0][b] + mass[1][b]) + (mass[2][b] + mass[3][b]);
    if (below + m > limit) {
      crossing = b;
      break;
    }
    below += m;
  }
  window.resize(vocab);
  int64_t count = 0;
  for (int64_t v = 0; v < vocab; ++v) {  // branch-free: the crossing bin may hold half the row
    window[count] = v;
    count += s.keys[v] == crossing;
  }
  window.resize(count);
}

// Zero the tokens top-p removes from the weights w (ascending by weight, then logit, then id, while the mass of a
// token and every one before it is at most the budget of their total ``whole``); returns the kept mass.
double nucleus(std::vector<float>& w, const float* scaled, double budget, double whole) {
  RowScratch& s = row_scratch();
  const int64_t vocab = static_cast<int64_t>(w.size());
  const double limit = budget * whole;
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(w.data());
  std::vector<int64_t>& window = s.window;
  double below = 0.0;
  int first_level = 1;  // the histogram did the first level
  if (!histogram_only() && pivot_window(w, limit, window, below)) {
    first_level = 0;
  } else {
    histogram_window(w, limit, window, below);
  }
  // then the exponent and 3 mantissa bits (a pivot's window only), 8, 8 and 4 more bits; the window ends as the
  // tokens of one exact probability (or one token)
  const int shifts[4] = {FIRST_SHIFT, 12, 4, 0};
  const int widths[4] = {10, 8, 8, 4};
  for (int level = first_level; level < 4 && window.size() > 1; ++level) {
    const int shift = shifts[level];
    const uint32_t mask = (1u << widths[level]) - 1;
    double sub[FIRST_BINS] = {};
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

static float row_max_portable(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < n; ++v) m = x[v] > m ? x[v] : m;
  return m;
}

// w = exp(x - top), and the float64 sum of each of its blocks of SAMPLE_BLOCK.
static void exp_blocks_portable(const float* x, int64_t n, float top, float* w, double* block_sums) {
  for (int64_t start = 0, b = 0; start < n; start += SAMPLE_BLOCK, ++b) {
    const int64_t end = std::min(n, start + SAMPLE_BLOCK);
    double sums[4] = {0, 0, 0, 0};
    for (int64_t v = start; v < end; ++v) {
      w[v] = exp_weight(x[v] - top);
      sums[(v - start) & 3] += w[v];
    }
    block_sums[b] = (sums[0] + sums[1]) + (sums[2] + sums[3]);
  }
}

float row_max(const float* x, int64_t n) {
#ifdef EVOSPEC_X86_KERNELS
  const Isa isa = x86::isa();
  if (isa == Isa::avx512) return x86::row_max_avx512(x, n);
  if (isa == Isa::avx2) return x86::row_max_avx2(x, n);
#endif
  return row_max_portable(x, n);
}

void exp_blocks(const float* x, int64_t n, float top, float* w, double* block_sums) {
#ifdef EVOSPEC_X86_KERNELS
  const Isa isa = x86::isa();
  if (isa == Isa::avx512) return x86::exp_blocks_avx512(x, n, top, w, block_sums);
  if (isa == Isa::avx2) return x86::exp_blocks_avx2(x, n, top, w, block_sums);
#endif
  exp_blocks_portable(x, n, top, w, block_sums);
}

// The row's weights exp(x - max x) (the softmax up to its total) into w, and their block sums: two passes, each
// split over whole blocks between the threads (row_threads). The maximum is exact in any order and each block's sum
// is computed alone, then the blocks add up in order on this thread: the same bits from any number of threads.
void exp_weights(const float* x, int64_t n, std::vector<float>& w, std::vector<double>& cumulative) {
  w.resize(n);
  const int64_t blocks = (n + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
  cumulative.resize(blocks);
  float top = -std::numeric_limits<float>::infinity();
  std::vector<float> tops(blocks, top);
  for_block_ranges(blocks, [&](int64_t b0, int64_t b1) {
    const int64_t start = b0 * SAMPLE_BLOCK, end = std::min(n, b1 * SAMPLE_BLOCK);
    tops[b0] = row_max(x + start, end - start);
  });
  for (float t : tops) top = t > top ? t : top;
  if (!std::isfinite(top)) throw SettingsError("a row of the target's logits has no finite maximum (NaN or inf)");
  for_block_ranges(blocks, [&](int64_t b0, int64_t b1) {
    const int64_t start = b0 * SAMPLE_BLOCK, end = std::min(n, b1 * SAMPLE_BLOCK);
    exp_blocks(x + start, end - start, top, w.data() + start, cumulative.data() + b0);
  });
  double running = 0.0;
  for (double& c : cumulative) c = running += c;
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

double column_mass(const int64_t* columns, const double* q, int64_t width, int64_t y) {
#ifdef EVOSPEC_X86_KERNELS
  if (x86::isa() != Isa::portable) return x86::column_mass_avx2(columns, q, width, y);
#endif
  double m = 0.0;
  for (int64_t c = 0; c < width; ++c)
    if (columns[c] == y) m += q[c];
  return m;
}

static void mass_below_serial(const float* p, int64_t n, float s, double& below, int64_t& ties) {
#ifdef EVOSPEC_X86_KERNELS
  if (x86::isa() == Isa::avx512) return x86::mass_below_avx512(p, n, s, below, ties);
  if (x86::isa() == Isa::avx2) return x86::mass_below_avx2(p, n, s, below, ties);
#endif
  mass_below_portable(p, n, s, below, ties);
}

// Over chunks of MASS_CHUNK weights, whatever the threads: each chunk's sum alone, then the chunks in order, so the
// mass has the same bits from any number of threads.
void mass_below(const float* p, int64_t n, float s, double& below, int64_t& ties) {
  const int64_t chunks = (n + MASS_CHUNK - 1) / MASS_CHUNK;
  double masses[MAX_MASS_CHUNKS];
  int64_t counts[MAX_MASS_CHUNKS];
  if (chunks > MAX_MASS_CHUNKS) return mass_below_serial(p, n, s, below, ties);
  for_chunk_ranges(chunks, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t start = c * MASS_CHUNK;
      masses[c] = 0.0;
      counts[c] = 0;
      mass_below_serial(p + start, std::min(n, start + MASS_CHUNK) - start, s, masses[c], counts[c]);
    }
  });
  below = 0.0;
  ties = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    below += masses[c];
    ties += counts[c];
  }
}

}  // namespace evospec::detail
