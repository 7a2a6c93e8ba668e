// What the fused recurrences (fused_bf16.cpp, fused_f32.cpp) share: their sigmoid, tanh and exp, the bf16
// rounding, and the loops over a step's rows. One copy, so both kernels compute a gate the same way.
//
// Accuracy, against float64 over [-80, 80]: exp within 1 ulp, sigmoid within 2.4 ulp (as ATen's), tanh within
// 9e-8 absolute (ATen's: 3e-8). Built with -ffp-contract=off, every vector clone gives the plain one's bits.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace namegen_fused {

using at::Tensor;
using c10::optional;

using bf16 = uint16_t;  // raw bits; ATen's at::BFloat16 has the same layout and rounding
#define R __restrict__  // a row function's pointers never overlap (vectorises without runtime checks)

#define NG_VECTOR __attribute__((target_clones("avx512f", "avx2", "default")))

inline float from_bf16(bf16 b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 to_bf16(float f) {  // round to nearest even, as c10::BFloat16
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? bf16(0x7FC0) : static_cast<bf16>(rounded);
}

inline float exp_approx(float x) {  // Cephes' expf: range reduction by ln 2, a degree-6 polynomial
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest: + 1.5 * 2^23
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = (p * (r * r) + r) + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;  // 2^k
  float s;
  std::memcpy(&s, &bits, 4);
  return e * s;
}

inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

inline float tanh_approx(float x) {
  const float t = exp_approx(-2.0f * std::fabs(x));
  return std::copysign((1.0f - t) / (1.0f + t), x);
}

inline float lerp_like_aten(float a, float b, float w) {  // torch.lerp's formula, exact at w = 0 and 1
  return std::fabs(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

template <typename T>
inline T* row(const Tensor& t, int64_t i) {  // row i of a 2-D tensor whose rows are contiguous
  return reinterpret_cast<T*>(t.data_ptr()) + i * t.stride(0);
}

template <typename F>
inline void over_rows(int64_t n, int64_t width, const F& body) {  // both cores from ~32k elements, as ATen
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, width));
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) body(i);
  });
}

inline void check(const Tensor& t, at::ScalarType dtype, const char* who, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == 2 && t.stride(1) == 1,
              who, ": ", what, " must be a CPU ", dtype, " matrix with contiguous rows");
}

}  // namespace namegen_fused
