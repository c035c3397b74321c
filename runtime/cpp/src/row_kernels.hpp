// Passes over one row of weights (row_kernels.cpp), for the sampling verifier (verify.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace evospec::detail {

constexpr int64_t SAMPLE_BLOCK = 1024;  // weights per block of the two-level draw (Python's sampling.SAMPLE_BLOCK)

// Row-sized work buffers, reused from row to row (per thread): a fresh 600 kB vector is fresh pages from the kernel.
struct RowScratch {
  std::vector<float> scaled, w;
  std::vector<uint16_t> keys;
  std::vector<int64_t> window, next;
  std::vector<double> blocks, fresh_blocks;
};
RowScratch& row_scratch();

// The maximum of a row without NaN, with the widest loop the CPU runs.
float row_max(const float* x, int64_t n);
// w = exp(x - top) and the float64 sum of each of its blocks of SAMPLE_BLOCK, the same bits from every loop.
void exp_blocks(const float* x, int64_t n, float top, float* w, double* block_sums);
// The row's weights exp(x - max x) (the softmax up to its total) into w and their cumulative float64 block sums
// (the last: the total); a row without a finite maximum is refused.
void exp_weights(const float* x, int64_t n, std::vector<float>& w, std::vector<double>& cumulative);
// Cumulative float64 sums of blocks of SAMPLE_BLOCK weights.
void block_cumulative(const std::vector<float>& w, std::vector<double>& cumulative);
// The first token whose cumulative weight exceeds u x the total (a zero weight is never drawn).
int64_t draw_blocks(const std::vector<float>& w, const std::vector<double>& cumulative, double u);
// The float64 sum of the weights.
double total_of(const std::vector<float>& w);
// The sum of q over the columns that hold token y (a padded set repeats a token with q = 0).
double column_mass(const int64_t* columns, const double* q, int64_t width, int64_t y);
// The float64 mass of the weights below s, and how many equal s.
void mass_below(const float* p, int64_t n, float s, double& below, int64_t& ties);
// Zero the tokens top-p removes from w (ascending by weight, then scaled logit, then id, while the mass of a token
// and every one before it is at most budget x whole, their total); returns the kept mass.
double nucleus(std::vector<float>& w, const float* scaled, double budget, double whole);

}  // namespace evospec::detail
