// [NOTE] AVX2 variant (built with -mavx2 -mfma -mf16c; run when CPUID and the OS allow AVX2, FMA
// and F16C). It exists for the CPUs without AVX512-BF16/VNNI that sit in most consumer-GPU hosts
// (AMD Zen 2/3, Intel desktop parts since Alder Lake), which would otherwise run the generic code.
// Same blocking as the AVX512 variant: 4 weight rows per pass (4 load streams), tokens in chunks
// of up to 2 that share each weight load, software prefetch prefetch_bytes() ahead in every row;
// by default each stream walks its own run of rows (row order "streams", kernel_ops.h).
// BF16: a weight is widened to fp32 exactly (16-bit shift into the high half) and multiplied with
//   fp32 activations, so results equal the generic variant's up to summation order. 16 weights
//   per 256-bit load: unpacklo/hi_epi16(zero, w) give the fp32 values {0-3, 8-11} and {4-7, 12-15}
//   of the 16 (per 128-bit lane); the packed activations are stored in that order (pack()), so no
//   shuffle runs per weight load. A row tail of n % 16 values is summed in scalar code.
//   Packed: fp32 [n_tok][n + 16] (the pad: act_stride); each full 16-chunk permuted as above, the
//   tail in natural order.
// Q8_0: GGUF blocks read in place. vpmaddubsw multiplies u8 x s8, so per block the weights become
//   |q_w| (vpsignb q_w, q_w) and each token's activations take the weights' signs (vpsignb q_x,
//   q_w): |q_w| * sign(q_w) q_x = q_w q_x. |q_w| <= 128 and |q_x| <= 127 (activation quantisation,
//   numeric.h), so a pair sum is at most 32512 and the int16 saturation of vpmaddubsw never
//   applies. vpmaddwd with ones sums to 8 int32 lanes (exact), converted once per block and scaled
//   by d_w * d_x with one multiply + one fma. Packed: QuantBlockQ8 [n_tok][n / 32] (generic's).
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/q8_rows16.h"
#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"
#include "cpu/quantize_q8_simd.h"

namespace hm::cpu {
namespace {

constexpr int kRows = 4;        // weight rows per pass
constexpr int kTokChunk = 2;    // tokens per register block (16 ymm registers)
constexpr int kChunkBf16 = 16;  // bf16 values per 256-bit weight load
// Row order when HYBRID_MOE_ROW_ORDER is unset (kernel_ops.h): streams. This variant prefetches
// within a row only, so each stream must run on into the row it reads next. Zen 3 VM, 2 threads,
// 8 experts, alternating: T=1 bf16 median 3.02 vs 3.54 ms, Q8_0 2.03 vs 2.40 ms (5 of 7 pairs
// each), T=4 bf16 10.1 vs 13.7 ms (3 of 3) against interleaved (bench/RESULTS.md, session 6).
constexpr RowOrder kAvx2RowOrder = RowOrder::kStreams;
// Packed bf16 activations: token t at t * act_stride(n) floats. The 64-byte pad keeps rows of
// power-of-two length (2048 values: 8 KiB) off the same L1 sets (with 4 weight rows 4 KiB apart,
// every stream of a pass mapped to one 8-way set).
inline int64_t act_stride(int64_t n) {
  return n + 16;
}

// Index in a packed bf16 activation row of value k (full 16-chunks permuted, see [NOTE]).
inline int64_t bf16_slot(int64_t k, int64_t n) {
  const int64_t c = k / kChunkBf16 * kChunkBf16;
  if (c + kChunkBf16 > n) return k;  // tail: natural order
  static constexpr int kInv[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
  return c + kInv[k - c];
}

std::size_t avx2_packed_bytes(WeightFormat f, int n_tok, int64_t n) {
  if (f == WeightFormat::kBF16) return static_cast<std::size_t>(n_tok) * act_stride(n) * 4;
  return fp32_q8_packed_bytes(f, n_tok, n);
}

void avx2_pack(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1,
               const float* const* src, uint8_t* packed) {
  if (f == WeightFormat::kQ8_0) {  // pack_q8_blocks's layout, vector quantiser
    for (int t = 0; t < n_tok; ++t) {
      auto* blocks = reinterpret_cast<QuantBlockQ8*>(packed) + t * (n / kQ8BlockSize);
      for (int64_t k = k0; k < k1; k += kQ8BlockSize)
        quantize_block_q8_avx2(src[t] + (k - k0), &blocks[k / kQ8BlockSize]);
    }
    return;
  }
  for (int t = 0; t < n_tok; ++t) {
    float* dst = reinterpret_cast<float*>(packed) + t * act_stride(n);
    for (int64_t k = k0; k < k1; ++k) dst[bf16_slot(k, n)] = src[t][k - k0];
  }
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

inline void prefetch(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

// y[t * ldy + r * yr] for R rows (row r at w + r * stride) x NT tokens (token t's packed fp32 at
// act + t * act_stride(n)).
template <int R, int NT>
void bf16_block(const uint8_t* w, std::size_t stride, int64_t n, const float* act, float* y,
                int64_t ldy, int64_t yr, int64_t pf) {
  __m256 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  const __m256i zero = _mm256_setzero_si256();
  const int64_t n16 = n / kChunkBf16 * kChunkBf16, ld = act_stride(n);
  for (int64_t k = 0; k < n16; k += kChunkBf16) {
    __m256 xlo[NT], xhi[NT];
    for (int t = 0; t < NT; ++t) {
      xlo[t] = _mm256_loadu_ps(act + t * ld + k);
      xhi[t] = _mm256_loadu_ps(act + t * ld + k + 8);
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * stride + k * 2;
      if (pf > 0 && (k & 31) == 0) prefetch(p + pf);  // one line per 32 values
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256 wlo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, wv));
      const __m256 whi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, wv));
      for (int t = 0; t < NT; ++t) {
        acc[r][t] = _mm256_fmadd_ps(wlo, xlo[t], acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(whi, xhi[t], acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const auto* wr = reinterpret_cast<const uint16_t*>(w + r * stride);
    for (int t = 0; t < NT; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t k = n16; k < n; ++k) s += bf16_to_f32(wr[k]) * act[t * ld + k];
      y[t * ldy + r * yr] = s;
    }
  }
}

template <int R, int NT>
void q8_block(const uint8_t* w, std::size_t stride, int64_t nb, const QuantBlockQ8* act, float* y,
              int64_t ldy, int64_t yr, int64_t pf) {
  __m256 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b) {
    __m256i xq[NT];
    __m256 dx[NT];
    for (int t = 0; t < NT; ++t) {
      const QuantBlockQ8& a = act[t * nb + b];
      xq[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q));
      dx[t] = _mm256_broadcast_ss(&a.d);
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * stride + b * kQ8BlockBytes;
      if (pf > 0 && (b & 1) == 0) prefetch(blk + pf);  // ~one line per 2 blocks (68 bytes)
      const auto* bq = reinterpret_cast<const BlockQ8_0*>(blk);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bq->qs));
      const __m256i aq = _mm256_sign_epi8(q, q);  // |q_w| as u8 (-128 -> 128)
      const __m256 dw = _mm256_set1_ps(_cvtsh_ss(bq->d));
      for (int t = 0; t < NT; ++t) {
        const __m256i p16 = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(xq[t], q));
        const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc[r][t] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw, dx[t]), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * ldy + r * yr] = hsum(acc[r][t]);
}

// The R rows at w, w + stride, ... (y of row r at y + r * yr), all n_tok tokens in chunks of
// kTokChunk (weights are prefetched on the first chunk only; the later chunks find the R rows in
// L1/L2).
template <int R>
void rows_pass(WeightFormat f, const uint8_t* w, std::size_t stride, int64_t n_in,
               const uint8_t* packed, int n_tok, float* y, int64_t ldy, int64_t yr, int64_t pf) {
  for (int t = 0; t < n_tok; t += kTokChunk) {
    const bool pair = n_tok - t >= 2;
    const int64_t p = t == 0 ? pf : 0;
    float* yt = y + t * ldy;
    if (f == WeightFormat::kBF16) {
      const float* a = reinterpret_cast<const float*>(packed) + t * act_stride(n_in);
      if (pair)
        bf16_block<R, 2>(w, stride, n_in, a, yt, ldy, yr, p);
      else
        bf16_block<R, 1>(w, stride, n_in, a, yt, ldy, yr, p);
    } else {
      const int64_t nb = n_in / kQ8BlockSize;
      const auto* a = reinterpret_cast<const QuantBlockQ8*>(packed) + t * nb;
      if (pair)
        q8_block<R, 2>(w, stride, nb, a, yt, ldy, yr, p);
      else
        q8_block<R, 1>(w, stride, nb, a, yt, ldy, yr, p);
    }
  }
}

void avx2_dot_rows(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                   int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy) {
  const int64_t pf = prefetch_bytes();
  const int64_t n_pass = rows / kRows;
  if (row_order(kAvx2RowOrder) == RowOrder::kStreams) {
    // Pass p takes row p of each of the kRows runs of n_pass rows: each stream walks one run
    // front to back, and the in-row prefetch runs on from a row's end into the row that the
    // same stream reads in the next pass.
    const std::size_t step = static_cast<std::size_t>(n_pass) * row_stride;
    for (int64_t p = 0; p < n_pass; ++p)
      rows_pass<kRows>(f, w + p * row_stride, step, n_in, packed, n_tok, y + p, ldy, n_pass, pf);
  } else {
    for (int64_t p = 0; p < n_pass; ++p)
      rows_pass<kRows>(f, w + p * kRows * row_stride, row_stride, n_in, packed, n_tok,
                       y + p * kRows, ldy, 1, pf);
  }
  const int64_t r = n_pass * kRows;
  const uint8_t* wt = w + r * row_stride;
  switch (rows - r) {
    case 3:
      rows_pass<3>(f, wt, row_stride, n_in, packed, n_tok, y + r, ldy, 1, pf);
      break;
    case 2:
      rows_pass<2>(f, wt, row_stride, n_in, packed, n_tok, y + r, ldy, 1, pf);
      break;
    case 1:
      rows_pass<1>(f, wt, row_stride, n_in, packed, n_tok, y + r, ldy, 1, pf);
      break;
    default:
      break;
  }
}

// Q8_0 rows in groups of 16 (core/q8_rows16.h), G adjacent groups x NT tokens. Per block and
// value quad j: two 256-bit loads per group hold values 4j..4j+3 of rows 0-7 and 8-15 (stored
// q ^ 0x80: one xor gives q back), each multiplied with the token's 4 broadcast activations by the
// sign trick of the GGUF-row code (vpmaddubsw |q_w| x sign(q_w) q_x, vpmaddwd with ones: one int32
// per row, exact), summed over the 8 quads; then one convert and one fma with d_w (8 rows' scales
// from one 16-byte load) x d_x per 8 rows and token. The scaling runs once per block for 8 rows
// instead of once per block and row. G = 2 (one token): two weight streams in flight and each
// broadcast shared by both groups (one contiguous stream per core read DRAM ~20% slower than
// the GGUF-row code's 4 row streams on the Zen 3 VM, bench_q8_rows).
template <int NT, int G>
inline void q8_group_block(const uint8_t* grp, std::size_t group_bytes, int64_t nb,
                           const QuantBlockQ8* act, float* y, int64_t ldy, int64_t pf) {
  const std::size_t q_off = static_cast<std::size_t>(nb) * 2 * kQ8GroupRows;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256 acc[NT][G][2];
  for (int t = 0; t < NT; ++t)
    for (int g = 0; g < G; ++g) acc[t][g][0] = acc[t][g][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = grp + q_off + b * kQ8GroupBlockBytes;  // group g: + g * group_bytes
    if (pf > 0)
      for (int g = 0; g < G; ++g)
        for (int o = 0; o < kQ8GroupBlockBytes; o += 64) prefetch(qb + g * group_bytes + pf + o);
    __m256i sum[NT][G][2];
    for (int t = 0; t < NT; ++t)
      for (int g = 0; g < G; ++g) sum[t][g][0] = sum[t][g][1] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      __m256i w[G][2], a[G][2];
      for (int g = 0; g < G; ++g)
        for (int h = 0; h < 2; ++h) {
          w[g][h] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                         qb + g * group_bytes + 64 * j + 32 * h)),
                                     flip);
          a[g][h] = _mm256_sign_epi8(w[g][h], w[g][h]);  // |q_w|
        }
      for (int t = 0; t < NT; ++t) {
        int32_t x4;
        std::memcpy(&x4, act[t * nb + b].q + 4 * j, 4);
        const __m256i x = _mm256_set1_epi32(x4);
        for (int g = 0; g < G; ++g)
          for (int h = 0; h < 2; ++h)
            sum[t][g][h] = _mm256_add_epi32(
                sum[t][g][h],
                _mm256_madd_epi16(_mm256_maddubs_epi16(a[g][h], _mm256_sign_epi8(x, w[g][h])),
                                  ones));
      }
    }
    for (int g = 0; g < G; ++g)
      for (int h = 0; h < 2; ++h) {
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
            grp + g * group_bytes + b * 2 * kQ8GroupRows + 16 * h)));
        for (int t = 0; t < NT; ++t)
          acc[t][g][h] =
              _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t][g][h]),
                              _mm256_mul_ps(dw, _mm256_set1_ps(act[t * nb + b].d)), acc[t][g][h]);
      }
  }
  for (int t = 0; t < NT; ++t)
    for (int g = 0; g < G; ++g)
      for (int h = 0; h < 2; ++h)
        _mm256_storeu_ps(y + t * ldy + g * kQ8GroupRows + 8 * h, acc[t][g][h]);
}

void avx2_dot_groups_q8(const uint8_t* w, int64_t groups, int64_t n_in, const uint8_t* packed,
                        int n_tok, float* y, int64_t ldy) {
  const int64_t nb = n_in / kQ8BlockSize;
  const auto* act = reinterpret_cast<const QuantBlockQ8*>(packed);
  const std::size_t group_bytes = kQ8GroupRows * row_bytes(WeightFormat::kQ8_0, n_in);
  const int64_t pf = prefetch_bytes();
  int64_t g = 0;
  if (n_tok == 1)  // decode: two groups per pass
    for (; g + 2 <= groups; g += 2)
      q8_group_block<1, 2>(w + g * group_bytes, group_bytes, nb, act, y + g * kQ8GroupRows, ldy,
                           pf);
  for (; g < groups; ++g) {
    const uint8_t* grp = w + g * group_bytes;
    float* yg = y + g * kQ8GroupRows;
    int t = 0;
    for (; t + 2 <= n_tok; t += 2)  // later chunks find the group in L1/L2: no prefetch
      q8_group_block<2, 1>(grp, group_bytes, nb, act + t * nb, yg + t * ldy, ldy, t == 0 ? pf : 0);
    if (t < n_tok)
      q8_group_block<1, 1>(grp, group_bytes, nb, act + t * nb, yg + t * ldy, ldy, t == 0 ? pf : 0);
  }
}

}  // namespace

const KernelOps& avx2_ops() {
  static const KernelOps ops{Isa::kAvx2, avx2_packed_bytes, avx2_pack, avx2_dot_rows,
                             avx2_dot_groups_q8};
  return ops;
}

}  // namespace hm::cpu
