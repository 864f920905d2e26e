// [NOTE] Vector forms of quantize_block_q8 (numeric.h): 32 fp32 activations -> {d, q[32]}, bit for
// bit the scalar result for finite input (the same max, the same d = amax / 127 and 1 / d, the same
// products, round half to even, clamp to +-127). The scalar form calls libm per value
// (nearbyintf, fmaxf, fminf): ~0.45 us per block, 27-30 us for one 2048-wide token on the lent
// Xeon, which every other worker waited for at a T=1 layer's first barrier (bench/RESULTS.md,
// session 9). Included only by the ISA translation units, each compiled with its -m flags; the
// functions have internal linkage so no TU's wider encoding can stand in for another's.
#pragma once

#include <immintrin.h>

#include "cpu/kernel_ops.h"

namespace hm::cpu {
namespace {

#if defined(__AVX512F__)
inline void quantize_block_q8_avx512(const float* x, QuantBlockQ8* out) {
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  out->d = d;
  const __m512 vid = _mm512_set1_ps(id), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  const auto to_i8 = [&](__m512 v) {
    v = _mm512_roundscale_ps(_mm512_mul_ps(v, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi)));
  };
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out->q), to_i8(a));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out->q + 16), to_i8(b));
}
#endif

#if defined(__AVX2__)
inline void quantize_block_q8_avx2(const float* x, QuantBlockQ8* out) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 v[4];
  for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
  const __m256 m =
      _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                    _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  out->d = d;
  const __m256 vid = _mm256_set1_ps(id), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  __m256i q[4];
  for (int i = 0; i < 4; ++i) {
    const __m256 r =
        _mm256_round_ps(_mm256_mul_ps(v[i], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
  }
  // packs work per 128-bit lane: dwords come out as q0[0:4] q1[0:4] q2[0:4] q3[0:4] | q0[4:8] ..
  const __m256i p =
      _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->q),
                      _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}
#endif

}  // namespace
}  // namespace hm::cpu
