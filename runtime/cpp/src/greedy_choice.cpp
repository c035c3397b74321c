// A greedy drafter level's choice (greedy_choice.hpp), for the C++ drafter's chain (tree.cpp) and, through the C ABI
// (evospec_greedy_choice), Python's drafter's chain (runtime/native_choice.py).
//
// Why: each greedy level took torch's log_softmax over the head's row, then its max (or its topk(2) for a sibling):
// three or four passes and two or three dispatched ops, 45-100 us a level inside the decoding loop on the medium
// pair's 16,384 columns, where the row is only read to pick one or two columns and score them. Here: one pass of
// block maxima (vectorised), a scan of the winning block for its first column (and of the blocks holding the
// runner-up), and one pass of exp(x - max) summed in float64 (the verifier's vectorised weights): 11 us on a warm
// row, 33 us right after the head's matmul, against 45-86 us for torch's ops there (README, issue 18, stop 49).
// Both drafters call this same function, so their chains stay identical column for column and score for score.
#include "greedy_choice.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "evospec/drafter.hpp"
#include "row_kernels.hpp"

namespace evospec::detail {

namespace {

constexpr int64_t CHOICE_BLOCK = SAMPLE_BLOCK;  // columns per block maximum (and per float64 partial sum)

// The first column of x[start, end) other than ``skip`` holding ``value``, or -1.
int64_t first_holding(const float* x, int64_t start, int64_t end, float value, int64_t skip) {
  for (int64_t v = start; v < end; ++v)
    if (x[v] == value && v != skip) return v;
  return -1;
}

// The maximum of x[start, end) without column ``skip``.
float max_without(const float* x, int64_t start, int64_t end, int64_t skip) {
  float m = -std::numeric_limits<float>::infinity();
  if (skip > start) m = row_max(x + start, skip - start);
  if (skip + 1 < end) m = std::max(m, row_max(x + skip + 1, end - skip - 1));
  return m;
}

}  // namespace

GreedyChoice greedy_choice(const float* x, int64_t n, bool runner_up) {
  if (n < 1) throw SettingsError("a greedy choice over an empty row of logits");
  const int64_t blocks = (n + CHOICE_BLOCK - 1) / CHOICE_BLOCK;
  thread_local std::vector<float> tops, w;
  thread_local std::vector<double> sums;
  tops.resize(blocks);
  sums.resize(blocks);
  w.resize(n);
  float top = -std::numeric_limits<float>::infinity();
  int64_t top_block = -1;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * CHOICE_BLOCK;
    tops[b] = row_max(x + start, std::min(n, start + CHOICE_BLOCK) - start);
    if (tops[b] > top) top = tops[b], top_block = b;
  }
  if (!std::isfinite(top))
    throw SettingsError("a row of the drafter's logits has no finite maximum (NaN or inf): no greedy choice");
  GreedyChoice choice;
  const int64_t block_end = std::min(n, (top_block + 1) * CHOICE_BLOCK);
  choice.first = first_holding(x, top_block * CHOICE_BLOCK, block_end, top, -1);
  if (runner_up && n > 1) {
    // the runner-up's value: the winning block without the first choice, against every other block's maximum
    float second = max_without(x, top_block * CHOICE_BLOCK, block_end, choice.first);
    for (int64_t b = 0; b < blocks; ++b)
      if (b != top_block) second = std::max(second, tops[b]);
    for (int64_t b = 0; b < blocks && choice.second < 0; ++b) {  // its first column, in column order
      const int64_t start = b * CHOICE_BLOCK, end = std::min(n, start + CHOICE_BLOCK);
      if (b == top_block || tops[b] == second) choice.second = first_holding(x, start, end, second, choice.first);
    }
  }
  exp_blocks(x, n, top, w.data(), sums.data());
  double total = 0.0;
  for (double s : sums) total += s;  // in block order: the same sum whichever loop computed the blocks
  const double log_total = std::log(total);
  choice.first_logp = static_cast<float>(static_cast<double>(x[choice.first] - top) - log_total);
  if (choice.second >= 0)
    choice.second_logp = static_cast<float>(static_cast<double>(x[choice.second] - top) - log_total);
  return choice;
}

}  // namespace evospec::detail
