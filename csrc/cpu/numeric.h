// [NOTE] Scalar conversions shared by every CPU variant, so that all variants quantise activations
// identically (fp16 scale bits, bf16 rounding, Q8 activation blocks).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernel_ops.h"

namespace hm::cpu {

inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// One block of 32 activations -> {d, q}: d = max|x| / 127, q = round(x / d).
inline void quantize_block_q8(const float* x, QuantBlockQ8* out) {
  float amax = 0.f;
  for (int i = 0; i < kQ8BlockSize; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  out->d = d;
  for (int i = 0; i < kQ8BlockSize; ++i) {
    const float v = std::nearbyint(x[i] * id);
    out->q[i] = static_cast<int8_t>(std::fmax(-127.f, std::fmin(127.f, v)));
  }
}

inline float silu(float g) {
  return g / (1.f + std::exp(-g));
}

}  // namespace hm::cpu
