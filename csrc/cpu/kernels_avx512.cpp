// [NOTE] AVX512 variant (built with -mavx512bf16 -mavx512vnni, run when CPUID allows it).
// BF16: activations rounded to bf16 once per group, dot products with vdpbf16ps (fp32 sums),
//   32 values per instruction; a row tail (n % 32) is read with a masked load, the activation
//   buffer is zero-padded to 32. Blocking: 2 weight rows x up to 4 tokens share each load.
// Q8_0: reads the GGUF blocks in place (34 bytes, no repacking). AVX512-VNNI only has u8 x s8
//   (vpdpbusd), so per block: |w| as u8 and x with w's sign moved onto it (x in [-127, 127], so
//   negation never overflows), int32 block sums, then fp32 fma with d_w * d_x.
// GCC 12's _mm512_reduce_add_ps trips -Wuninitialized inside its own header (false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"

namespace hm::cpu {
namespace {

inline int64_t round32(int64_t n) { return (n + 31) / 32 * 32; }

std::size_t avx_packed_bytes(WeightFormat f, int n_tok, int64_t n) {
  if (f == WeightFormat::kBF16) return static_cast<std::size_t>(n_tok) * round32(n) * 2;
  return static_cast<std::size_t>(n_tok) * (n / kQ8BlockSize) * sizeof(QuantBlockQ8);
}

void avx_pack(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1,
              const float* const* src, uint8_t* packed) {
  if (f == WeightFormat::kQ8_0) {
    for (int t = 0; t < n_tok; ++t) {
      auto* blocks = reinterpret_cast<QuantBlockQ8*>(packed) + t * (n / kQ8BlockSize);
      for (int64_t k = k0; k < k1; k += kQ8BlockSize)
        quantize_block_q8(src[t] + (k - k0), &blocks[k / kQ8BlockSize]);
    }
    return;
  }
  const int64_t n32 = round32(n);
  for (int t = 0; t < n_tok; ++t) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(packed) + t * n32;
    for (int64_t k = k0; k < k1; ++k) dst[k] = f32_to_bf16(src[t][k - k0]);
    if (k1 == n)
      for (int64_t k = n; k < n32; ++k) dst[k] = 0;
  }
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int NT>
inline void bf16_block(const uint8_t* w, std::size_t stride, int64_t n_in, const uint16_t* act,
                       int64_t act_stride, float* y, int64_t ldy) {
  __m512 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= n_in; k += 32) {
    __m512i a[NT];
    for (int t = 0; t < NT; ++t) a[t] = _mm512_loadu_si512(act + t * act_stride + k);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_loadu_si512(w + r * stride + k * 2);
      for (int t = 0; t < NT; ++t)
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)wv, (__m512bh)a[t]);
    }
  }
  if (k < n_in) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (n_in - k)) - 1);
    __m512i a[NT];
    for (int t = 0; t < NT; ++t) a[t] = _mm512_loadu_si512(act + t * act_stride + k);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(m, w + r * stride + k * 2);
      for (int t = 0; t < NT; ++t)
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)wv, (__m512bh)a[t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int R, int NT>
inline void q8_block(const uint8_t* w, std::size_t stride, int64_t nb, const QuantBlockQ8* act,
                     int64_t act_stride, float* y, int64_t ldy) {
  __m256 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i aw[R];
    __mmask32 neg[R];
    float dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * stride + b * kQ8BlockBytes;
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      aw[r] = _mm256_abs_epi8(q);
      neg[r] = _mm256_movepi8_mask(q);
      uint16_t d;
      __builtin_memcpy(&d, blk, 2);
      dw[r] = _cvtsh_ss(d);
    }
    for (int t = 0; t < NT; ++t) {
      const QuantBlockQ8& a = act[t * act_stride + b];
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q));
      for (int r = 0; r < R; ++r) {
        const __m256i sx = _mm256_mask_sub_epi8(xq, neg[r], zero, xq);
        const __m256i dp = _mm256_dpbusd_epi32(zero, aw[r], sx);
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_set1_ps(dw[r] * a.d), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * ldy + r] = hsum256(acc[r][t]);
}

template <int R>
void bf16_rows(const uint8_t* w, std::size_t stride, int64_t n_in, const uint16_t* act,
               int64_t act_stride, int n_tok, float* y, int64_t ldy) {
  int t = 0;
  for (; t + 4 <= n_tok; t += 4)
    bf16_block<R, 4>(w, stride, n_in, act + t * act_stride, act_stride, y + t * ldy, ldy);
  const uint16_t* a = act + t * act_stride;
  float* yt = y + t * ldy;
  switch (n_tok - t) {
    case 3: bf16_block<R, 3>(w, stride, n_in, a, act_stride, yt, ldy); break;
    case 2: bf16_block<R, 2>(w, stride, n_in, a, act_stride, yt, ldy); break;
    case 1: bf16_block<R, 1>(w, stride, n_in, a, act_stride, yt, ldy); break;
    default: break;
  }
}

template <int R>
void q8_rows(const uint8_t* w, std::size_t stride, int64_t nb, const QuantBlockQ8* act, int n_tok,
             float* y, int64_t ldy) {
  int t = 0;
  for (; t + 4 <= n_tok; t += 4) q8_block<R, 4>(w, stride, nb, act + t * nb, nb, y + t * ldy, ldy);
  const QuantBlockQ8* a = act + t * nb;
  float* yt = y + t * ldy;
  switch (n_tok - t) {
    case 3: q8_block<R, 3>(w, stride, nb, a, nb, yt, ldy); break;
    case 2: q8_block<R, 2>(w, stride, nb, a, nb, yt, ldy); break;
    case 1: q8_block<R, 1>(w, stride, nb, a, nb, yt, ldy); break;
    default: break;
  }
}

void avx_dot_rows(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                  int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy) {
  int64_t r = 0;
  if (f == WeightFormat::kBF16) {
    const auto* act = reinterpret_cast<const uint16_t*>(packed);
    const int64_t as = round32(n_in);
    for (; r + 2 <= rows; r += 2)
      bf16_rows<2>(w + r * row_stride, row_stride, n_in, act, as, n_tok, y + r, ldy);
    if (r < rows) bf16_rows<1>(w + r * row_stride, row_stride, n_in, act, as, n_tok, y + r, ldy);
    return;
  }
  const auto* act = reinterpret_cast<const QuantBlockQ8*>(packed);
  const int64_t nb = n_in / kQ8BlockSize;
  for (; r + 2 <= rows; r += 2)
    q8_rows<2>(w + r * row_stride, row_stride, nb, act, n_tok, y + r, ldy);
  if (r < rows) q8_rows<1>(w + r * row_stride, row_stride, nb, act, n_tok, y + r, ldy);
}

}  // namespace

const KernelOps& avx512_ops() {
  static const KernelOps ops{Isa::kAvx512, avx_packed_bytes, avx_pack, avx_dot_rows};
  return ops;
}

}  // namespace hm::cpu
