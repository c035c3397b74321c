// The verifier's row passes with AVX2 and AVX-512 (row_kernels_x86.cpp), for row_kernels.cpp to dispatch to. The
// build targets baseline x86-64, whose SSE2 loops are several times slower here, so each loop is compiled for its
// own instruction set and runs only where the CPU has it. Every path gives the portable loops' weights bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define EVOSPEC_X86_KERNELS 1

namespace evospec::detail::x86 {

enum class Isa { portable, avx2, avx512 };
// The widest the CPU runs, unless EVOSPEC_NO_AVX512 (at most AVX2) or EVOSPEC_NO_AVX2 (portable) is set: the tests
// run each path and compare.
Isa isa();

float row_max_avx2(const float* x, int64_t n);
float row_max_avx512(const float* x, int64_t n);
// w = exp(x - top) and the float64 sum of each of its blocks of SAMPLE_BLOCK (x: a block boundary).
void exp_blocks_avx2(const float* x, int64_t n, float top, float* w, double* sums);
void exp_blocks_avx512(const float* x, int64_t n, float top, float* w, double* sums);
// The float64 mass of the weights below s, and how many equal s.
void mass_below_avx2(const float* p, int64_t n, float s, double& below, int64_t& ties);
void mass_below_avx512(const float* p, int64_t n, float s, double& below, int64_t& ties);
// The indices of the weights >= p appended to window; false past cap of them.
bool gather_at_least_avx2(const float* w, int64_t n, float p, int64_t cap, std::vector<int64_t>& window);
// The sum of q over the columns that hold token y.
double column_mass_avx2(const int64_t* columns, const double* q, int64_t width, int64_t y);
// score[i] += the dot product of x [d] with column i of m [d, c] (the mass index's centres, feature-major).
void column_dots_avx512(const float* m, const float* x, int64_t d, int64_t c, float* score);

}  // namespace evospec::detail::x86
#endif
