// Speculative sampling verification of one step (verify.cpp): what the C ABI's evospec_verify_sampled passes in.
#pragma once

#include <cstdint>
#include <vector>

namespace evospec::detail {

struct SampledStep {
  const float* logits;       // row r (0: the root, i + 1: node i), token v at logits[r * row_stride + v * vocab_stride]
  int64_t rows, vocab, row_stride, vocab_stride;
  const int64_t* tokens;     // [nodes] each node's token
  const int64_t* parents;    // [nodes] -1 for the root's children; a parent comes before its children
  int64_t nodes;
  const double* laws;        // [nodes, law_columns] each node's drafter law q, or nullptr: point masses
  const int64_t* columns;    // [law_columns] the target id of each law column, or nullptr: the columns are the vocabulary
  int64_t law_columns;
  double temperature, top_p;
  const double* uniforms;    // in [0, 1): one per tested child, one for the bonus token
  int64_t uniform_count;
};

struct SampledVerdict {
  std::vector<int64_t> accepted;  // accepted nodes, root to leaf
  int64_t bonus = -1;             // the target's token after the last accepted node
  int64_t uniforms_used = 0;
};

SampledVerdict verify_sampled(const SampledStep& step);

// The law at one row as verify_sampled computes it: weights (the nucleus's probabilities, removed tokens 0) into
// ``weights`` [vocab]; returns their float64 total.
double sampling_weights(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p,
                        float* weights);

}  // namespace evospec::detail
