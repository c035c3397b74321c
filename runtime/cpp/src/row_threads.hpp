// How the verifier's passes over a whole row split between threads (row_kernels.cpp).
//
// Why: at T > 0 the verdict is the largest cost of a step outside the model forwards (0.5-0.6 ms of a 13-16 ms
// step for the medium pair's 151k-token rows, two or three rows a step), and most of it is two passes over each
// row, the maximum and the weights exp(x - max). Between the target's forward and the drafter's next call the
// intra-op threads that just ran the forward are idle (and still spinning), so the passes run on them: torch's
// own pool (at::parallel_for, the threads of torch.set_num_threads), not a second one.
//
// The split never changes a result: the units are whole blocks or fixed chunks whatever the thread count, each
// unit is computed alone, and the units are combined in order on the calling thread.
// EVOSPEC_VERIFY_THREADS=1 keeps every pass on the calling thread (the tests compare); unset or 0: torch's threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "evospec/drafter.hpp"

namespace evospec::detail {

constexpr int64_t MASS_CHUNK = 16384;        // weights per unit of a masked sum
constexpr int64_t MAX_MASS_CHUNKS = 128;     // rows up to 2M tokens split; longer ones are summed whole
constexpr int64_t MIN_PARALLEL_UNITS = 2;    // fewer units stay on the calling thread
constexpr int64_t MIN_PARALLEL_BLOCKS = 32;  // rows under 32k tokens stay on the calling thread

// EVOSPEC_VERIFY_THREADS as a count (0 when unset); anything but a whole number is refused.
inline int64_t verify_threads_setting() {
  const char* value = std::getenv("EVOSPEC_VERIFY_THREADS");
  if (value == nullptr || *value == '\0') return 0;
  const std::string text(value);
  if (text.size() > 6 || text.find_first_not_of("0123456789") != std::string::npos)
    throw SettingsError("EVOSPEC_VERIFY_THREADS must be a whole number of threads (0: torch's intra-op threads), "
                        "got '" + text + "'");
  return std::stoll(text);
}

// The threads the row passes may use: EVOSPEC_VERIFY_THREADS when set above 0, else torch's intra-op threads.
inline int64_t row_threads() {
  static const int64_t fixed = verify_threads_setting();  // a refusal throws again at the next call
  const int64_t torch_threads = at::get_num_threads();
  return fixed > 0 ? std::min(fixed, torch_threads) : torch_threads;
}

// f(first, end) over [0, units) in contiguous ranges, one per thread (or all on this thread; inside a parallel
// region at::parallel_for itself runs f on the calling thread).
template <typename F>
void for_ranges(int64_t units, int64_t min_units, const F& f) {
  const int64_t threads = row_threads();
  if (threads <= 1 || units < min_units) {
    f(int64_t{0}, units);
    return;
  }
  at::parallel_for(0, units, (units + threads - 1) / threads, f);
}

template <typename F>
void for_block_ranges(int64_t blocks, const F& f) {
  for_ranges(blocks, MIN_PARALLEL_BLOCKS, f);
}

template <typename F>
void for_chunk_ranges(int64_t chunks, const F& f) {
  for_ranges(chunks, MIN_PARALLEL_UNITS, f);
}

}  // namespace evospec::detail
