// exp(x) in float32 for the verifier's weights exp(logit - max) (row_kernels.cpp, row_kernels_x86.cpp): Cephes'
// expf (the polynomial of avx_mathfun). The scalar function here and the SIMD loops do the same operations in the
// same order (no fused multiply-adds: -ffp-contract=off), so every path gives the same bits; within 2 ulp of exp.
// Below -87 (and for -inf, a masked token) the weight is 0: e^-87 of the top token.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace evospec::detail {

constexpr float EXP_FLOOR = -87.0f, LOG2E = 1.44269504088896341f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                            5.0000001201e-1f};

inline float exp_weight(float x) {
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

}  // namespace evospec::detail
