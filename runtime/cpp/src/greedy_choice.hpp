// A greedy drafter level's choice over one row of head logits (greedy_choice.cpp): the first choice, optionally the
// runner-up, and their log-probabilities, in two passes over the row.
#pragma once

#include <cstdint>

namespace evospec::detail {

struct GreedyChoice {
  int64_t first = -1, second = -1;  // second: -1 unless asked for (and the row has two columns)
  float first_logp = 0.0f, second_logp = 0.0f;
};

// ``x`` [n] float32 logits. ``first``: the first column holding the maximum (torch's max); ``second``: the first
// column, other than ``first``, holding the maximum of the rest (a tie with the first choice included). The
// log-probabilities are (x - max) - log(sum exp(x - max)), the sum in float64 over blocks in order (the
// verifier's weights, row_kernels.cpp), rounded to float32. The same bits on any CPU path.
GreedyChoice greedy_choice(const float* x, int64_t n, bool runner_up);

}  // namespace evospec::detail
