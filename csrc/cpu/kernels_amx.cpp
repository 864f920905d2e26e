// [NOTE] AMX variant (built with -mamx-tile -mamx-bf16 -mamx-int8; run only after Linux granted
// tile permission, see isa.cpp). For groups of at least kAmxMinTokens tokens it uses tiles; smaller
// groups, row tails (rows % 16) and bf16 rows whose length is not a multiple of 32 take the AVX512
// code, which reads the same packed buffer's first part.
// The weights stay in their GGUF layout (no repacked copy, no extra memory): they are tile A
//   (16 weight rows x 64 bytes, stride = the row length), and the tokens' activations, repacked
//   once per group into VNNI order, are tile B. C = W . X^T is [16 rows x 16 tokens].
// BF16: A = 16 rows x 32 bf16, B = 16 pairs x 16 tokens x 2 bf16, TDPBF16PS accumulates over all
//   of n_in in fp32; two token tiles share each weight tile.
// Q8_0: A = 16 rows x one block's 32 int8 (the 2-byte scale in front is skipped by the address),
//   B = 8 quads x 16 tokens x 4 int8; per block TDPBSSD gives exact int32 sums that are stored
//   and scaled by d_w[row] * d_x[token] into fp32 accumulators (16 zmm registers).
// Extra packed memory per group: n_tok16 x n x (2 bytes bf16 | 1.125 bytes q8); weights: none.
// Tile code per HYBRID_MOE_AMX_KERNEL (kernel_ops.h; default auto: bf16 simple, Q8_0 pipelined).
//   Pipelined: tile registers are not renamed, so with one A/B/C set a step's tile loads wait
//   for the previous step's multiply and (Q8_0) the int32 tile's store and scaling wait for its
//   multiply. Two register sets are used in turn (bf16: A/B of even and odd k steps; Q8_0: C/A/B
//   of even and odd blocks, so block b+1's multiply runs while block b is scaled), and while the
//   first token tile of a 16-row tile computes, the next 16-row tile is prefetched into L2. On
//   the lent Xeon this helped Q8_0 a little (T=512 29.3-30.1 ms vs 29.9-32.6) and made bf16
//   slower (23.5-26.2 vs 20.2-22.0 ms), hence the per-format default.
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 header false positives
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/q8_rows16.h"
#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"

namespace hm::cpu {
namespace {

inline int64_t round_to(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool use_tiles(WeightFormat f, int n_tok, int64_t n) {
  return n_tok >= kAmxMinTokens && n % 32 == 0;
}

// Offsets inside the packed buffer: [avx512 part][VNNI part][q8 scales][q8 rows: int8 [nt16][n],
// tokens padded with zeros (tile A of the q8_rows16 group code)].
std::size_t avx_part(WeightFormat f, int n_tok, int64_t n) {
  return align_up(avx512_ops().packed_bytes(f, n_tok, n), 64);
}
std::size_t vnni_part(WeightFormat f, int n_tok, int64_t n) {
  const int64_t nt16 = round_to(n_tok, 16);
  return align_up(static_cast<std::size_t>(nt16) * n * (f == WeightFormat::kBF16 ? 2 : 1), 64);
}

std::size_t amx_packed_bytes(WeightFormat f, int n_tok, int64_t n) {
  std::size_t bytes = avx_part(f, n_tok, n);
  if (!use_tiles(f, n_tok, n)) return bytes;
  bytes += vnni_part(f, n_tok, n);
  if (f == WeightFormat::kQ8_0) {
    bytes += static_cast<std::size_t>(n / 32) * round_to(n_tok, 16) * 4;
    bytes += static_cast<std::size_t>(round_to(n_tok, 16)) * n;
  }
  return bytes;
}

// The q8 rows part (see amx_packed_bytes) of a packed buffer with tiles.
std::size_t q8_rows_part(int n_tok, int64_t n) {
  const WeightFormat f = WeightFormat::kQ8_0;
  return avx_part(f, n_tok, n) + vnni_part(f, n_tok, n) +
         static_cast<std::size_t>(n / 32) * round_to(n_tok, 16) * 4;
}

void amx_pack(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1, const float* const* src,
              uint8_t* packed) {
  avx512_ops().pack(f, n_tok, n, k0, k1, src, packed);
  if (!use_tiles(f, n_tok, n)) return;
  const int64_t nt16 = round_to(n_tok, 16);
  uint8_t* vnni = packed + avx_part(f, n_tok, n);
  if (f == WeightFormat::kBF16) {
    // Pair p = k / 2 of token t at uint32 index p * nt16 + t (k's bf16 low, k + 1's high);
    // padded tokens are 0. Token-major: each token's values are read in order.
    auto* v = reinterpret_cast<uint32_t*>(vnni);
    for (int64_t t = 0; t < nt16; ++t) {
      const float* x = t < n_tok ? src[t] : nullptr;
      for (int64_t k = k0; k < k1; k += 2) {  // k1 - k0 is even: n % 32 == 0 with tiles
        const uint16_t lo = x ? f32_to_bf16(x[k - k0]) : 0, hi = x ? f32_to_bf16(x[k - k0 + 1]) : 0;
        v[(k / 2) * nt16 + t] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
      }
    }
    return;
  }
  // Quad j = k / 4 of token t at byte (j * nt16 + t) * 4 + k % 4; scale of block b, token t at
  // float index b * nt16 + t. Taken from the token-major blocks just written; padded tokens 0.
  auto* v = vnni;
  float* scales = reinterpret_cast<float*>(vnni + vnni_part(f, n_tok, n));
  uint8_t* rows = packed + q8_rows_part(n_tok, n);
  const auto* blocks = reinterpret_cast<const QuantBlockQ8*>(packed);
  const int64_t nb = n / 32;
  static const int8_t kZeros[32] = {};
  for (int64_t t = 0; t < nt16; ++t)
    for (int64_t b = k0 / 32; b < (k1 + 31) / 32; ++b) {
      const QuantBlockQ8* blk = t < n_tok ? &blocks[t * nb + b] : nullptr;
      const int8_t* q = blk ? blk->q : kZeros;
      scales[b * nt16 + t] = blk ? blk->d : 0.f;
      std::memcpy(rows + t * n + b * 32, q, 32);
      for (int j = 0; j < 8; ++j) std::memcpy(v + ((b * 8 + j) * nt16 + t) * 4, q + 4 * j, 4);
    }
}

void store_tile_result(const float* tmp /*[16 rows][16 tokens]*/, int64_t r0, int64_t t0, int n_tok,
                       float* y, int64_t ldy) {
  const int nt = static_cast<int>(std::min<int64_t>(16, n_tok - t0));
  for (int t = 0; t < nt; ++t)
    for (int r = 0; r < 16; ++r) y[(t0 + t) * ldy + r0 + r] = tmp[r * 16 + t];
}

// Tiles 0..n-1 all 16 rows x 64 bytes (the bf16 kernels' C, A and B tiles).
void load_uniform_tiles(int n) {
  TileConfig cfg;
  for (int i = 0; i < n; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// The bf16 kernels' sums: tile 0 (tokens t0..t0+15) and, when `two`, tile 1 (t0+16..) -> y.
inline void store_bf16_sums(float (&tmp)[2][256], int64_t r0, int64_t t0, bool two, int n_tok,
                            float* y, int64_t ldy) {
  _tile_stored(0, tmp[0], 64);
  store_tile_result(tmp[0], r0, t0, n_tok, y, ldy);
  if (two) {
    _tile_stored(1, tmp[1], 64);
    store_tile_result(tmp[1], r0, t0 + 16, n_tok, y, ldy);
  }
}

void amx_bf16(const uint8_t* w, std::size_t stride, int64_t rows16, int64_t n_in,
              const uint8_t* vnni, int n_tok, float* y, int64_t ldy) {
  load_uniform_tiles(5);
  const int64_t nt16 = round_to(n_tok, 16);
  const std::size_t bstride = static_cast<std::size_t>(nt16) * 4;
  alignas(64) float tmp[2][256];
  for (int64_t r0 = 0; r0 < rows16; r0 += 16) {
    const uint8_t* a = w + r0 * stride;
    for (int64_t t0 = 0; t0 < nt16; t0 += 32) {
      const bool two = t0 + 16 < nt16;
      _tile_zero(0);
      _tile_zero(1);
      for (int64_t k = 0; k < n_in; k += 32) {
        const uint8_t* b = vnni + (k / 2) * bstride + t0 * 4;
        _tile_loadd(2, a + k * 2, stride);
        _tile_loadd(3, b, bstride);
        _tile_dpbf16ps(0, 2, 3);
        if (two) {
          _tile_loadd(4, b + 64, bstride);
          _tile_dpbf16ps(1, 2, 4);
        }
      }
      store_bf16_sums(tmp, r0, t0, two, n_tok, y, ldy);
    }
  }
  _tile_release();
}

void amx_q8(const uint8_t* w, std::size_t stride, int64_t rows16, int64_t n_in, const uint8_t* vnni,
            const float* scales, int n_tok, float* y, int64_t ldy) {
  TileConfig cfg;
  cfg.rows[0] = 16, cfg.colsb[0] = 64;  // C: 16 rows x 16 tokens int32
  cfg.rows[1] = 16, cfg.colsb[1] = 32;  // A: 16 rows x 32 int8 (one block)
  cfg.rows[2] = 8, cfg.colsb[2] = 64;   // B: 8 quads x 16 tokens x 4 int8
  _tile_loadconfig(&cfg);
  const int64_t nt16 = round_to(n_tok, 16), nb = n_in / 32;
  const std::size_t bstride = static_cast<std::size_t>(nt16) * 4;
  alignas(64) int32_t isum[256];
  alignas(64) float tmp[256];
  for (int64_t r0 = 0; r0 < rows16; r0 += 16) {
    const uint8_t* a = w + r0 * stride;
    for (int64_t t0 = 0; t0 < nt16; t0 += 16) {
      __m512 acc[16];
      for (auto& v : acc) v = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        _tile_zero(0);
        _tile_loadd(1, a + b * kQ8BlockBytes + 2, stride);
        _tile_loadd(2, vnni + b * 8 * bstride + t0 * 4, bstride);
        _tile_dpbssd(0, 1, 2);
        _tile_stored(0, isum, 64);
        const __m512 dx = _mm512_loadu_ps(scales + b * nt16 + t0);
        for (int r = 0; r < 16; ++r) {
          uint16_t d;
          std::memcpy(&d, a + r * stride + b * kQ8BlockBytes, 2);
          const __m512 s = _mm512_mul_ps(dx, _mm512_set1_ps(_cvtsh_ss(d)));
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(isum + r * 16)), s, acc[r]);
        }
      }
      for (int r = 0; r < 16; ++r) _mm512_store_ps(tmp + r * 16, acc[r]);
      store_tile_result(tmp, r0, t0, n_tok, y, ldy);
    }
  }
  _tile_release();
}

// L2 prefetch of the bytes [off, off + 64) of each of the 16 rows at `tile` (the next row tile).
inline void prefetch_tile_lines(const uint8_t* tile, std::size_t stride, std::size_t off) {
  for (int r = 0; r < 16; ++r)
    _mm_prefetch(reinterpret_cast<const char*>(tile + r * stride + off), _MM_HINT_T1);
}

// One k step of 32 bf16 values: A tile `A` (16 rows), B tiles B0/B1 (token tiles t0, t0 + 16).
// A macro: GCC's tile intrinsics paste the tile number into the assembly text, so it must be a
// literal (a template parameter is not).
#define HM_BF16_STEP(A, B0, B1, a, stride, b, bstride, two) \
  do {                                                      \
    _tile_loadd(A, (a), (stride));                          \
    _tile_loadd(B0, (b), (bstride));                        \
    _tile_dpbf16ps(0, A, B0);                               \
    if (two) {                                              \
      _tile_loadd(B1, (b) + 64, (bstride));                 \
      _tile_dpbf16ps(1, A, B1);                             \
    }                                                       \
  } while (0)

// As amx_bf16; even k steps use tiles 2-4, odd ones 5-7 (see [NOTE], pipelining).
void amx_bf16_pipelined(const uint8_t* w, std::size_t stride, int64_t rows16, int64_t n_in,
                        const uint8_t* vnni, int n_tok, float* y, int64_t ldy) {
  load_uniform_tiles(8);
  const int64_t nt16 = round_to(n_tok, 16);
  const std::size_t bstride = static_cast<std::size_t>(nt16) * 4;
  alignas(64) float tmp[2][256];
  for (int64_t r0 = 0; r0 < rows16; r0 += 16) {
    const uint8_t* a = w + r0 * stride;
    const uint8_t* next = r0 + 16 < rows16 ? a + 16 * stride : nullptr;
    for (int64_t t0 = 0; t0 < nt16; t0 += 32) {
      const bool two = t0 + 16 < nt16;
      const bool pf = next != nullptr && t0 == 0;
      _tile_zero(0);
      _tile_zero(1);
      const uint8_t* b = vnni + t0 * 4;
      int64_t k = 0;
      for (; k + 64 <= n_in; k += 64) {
        if (pf) {
          prefetch_tile_lines(next, stride, k * 2);
          prefetch_tile_lines(next, stride, k * 2 + 64);
        }
        HM_BF16_STEP(2, 3, 4, a + k * 2, stride, b + (k / 2) * bstride, bstride, two);
        HM_BF16_STEP(5, 6, 7, a + k * 2 + 64, stride, b + (k / 2 + 16) * bstride, bstride, two);
      }
      if (k < n_in) {  // n_in % 64 == 32
        if (pf) prefetch_tile_lines(next, stride, k * 2);
        HM_BF16_STEP(2, 3, 4, a + k * 2, stride, b + (k / 2) * bstride, bstride, two);
      }
      store_bf16_sums(tmp, r0, t0, two, n_tok, y, ldy);
    }
  }
  _tile_release();
}

// Q8_0 block at a_blk (16 rows, stride apart): C = A . B with fresh int32 sums (a macro, as
// HM_BF16_STEP).
#define HM_Q8_ISSUE(C, A, B, a_blk, stride, b, bstride) \
  do {                                                  \
    _tile_zero(C);                                      \
    _tile_loadd(A, (a_blk) + 2, (stride));              \
    _tile_loadd(B, (b), (bstride));                     \
    _tile_dpbssd(C, A, B);                              \
  } while (0)

// acc[r] += float(isum[r][t]) * d_w[r] * d_x[t] for the block at a_blk (isum: its stored C).
inline void q8_scale_add(const uint8_t* a_blk, std::size_t stride, __m512 dx, const int32_t* isum,
                         __m512* acc) {
  for (int r = 0; r < 16; ++r) {
    uint16_t d;
    std::memcpy(&d, a_blk + r * stride, 2);
    const __m512 s = _mm512_mul_ps(dx, _mm512_set1_ps(_cvtsh_ss(d)));
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(isum + r * 16)), s, acc[r]);
  }
}

// Two Q8_0 tile sets (tiles 0-2 and 3-5): C 16 x 16 int32, A 16 x one block's 32 int8, B 8 quads
// x 16 columns x 4 int8 (amx_q8_pipelined: C rows are weight rows, B tokens).
void load_q8_tile_sets() {
  TileConfig cfg;
  for (int s = 0; s < 2; ++s) {
    cfg.rows[3 * s] = 16, cfg.colsb[3 * s] = 64;
    cfg.rows[3 * s + 1] = 16, cfg.colsb[3 * s + 1] = 32;
    cfg.rows[3 * s + 2] = 8, cfg.colsb[3 * s + 2] = 64;
  }
  _tile_loadconfig(&cfg);
}

// As amx_q8; even blocks use tiles 0-2, odd ones 3-5, block b+1's multiply is issued before
// block b's sums are stored and scaled (see [NOTE], pipelining).
void amx_q8_pipelined(const uint8_t* w, std::size_t stride, int64_t rows16, int64_t n_in,
                      const uint8_t* vnni, const float* scales, int n_tok, float* y, int64_t ldy) {
  load_q8_tile_sets();
  const int64_t nt16 = round_to(n_tok, 16), nb = n_in / 32;
  const std::size_t bstride = static_cast<std::size_t>(nt16) * 4;
  alignas(64) int32_t isum[2][256];
  alignas(64) float tmp[256];
  for (int64_t r0 = 0; r0 < rows16; r0 += 16) {
    const uint8_t* a = w + r0 * stride;
    const uint8_t* next = r0 + 16 < rows16 ? a + 16 * stride : nullptr;
    for (int64_t t0 = 0; t0 < nt16; t0 += 16) {
      const bool pf = next != nullptr && t0 == 0;
      __m512 acc[16];
      for (auto& v : acc) v = _mm512_setzero_ps();
      auto blk = [&](int64_t b) { return a + b * kQ8BlockBytes; };
      auto bt = [&](int64_t b) { return vnni + b * 8 * bstride + t0 * 4; };
      auto dx = [&](int64_t b) { return _mm512_loadu_ps(scales + b * nt16 + t0); };
      HM_Q8_ISSUE(0, 1, 2, blk(0), stride, bt(0), bstride);
      for (int64_t b = 0; b < nb; b += 2) {
        if (pf) {  // the next tile's rows, the 68 bytes this block pair covers
          prefetch_tile_lines(next, stride, b * kQ8BlockBytes);
          prefetch_tile_lines(next, stride, b * kQ8BlockBytes + 64);
        }
        if (b + 1 < nb) HM_Q8_ISSUE(3, 4, 5, blk(b + 1), stride, bt(b + 1), bstride);
        _tile_stored(0, isum[0], 64);
        q8_scale_add(blk(b), stride, dx(b), isum[0], acc);
        if (b + 1 < nb) {
          if (b + 2 < nb) HM_Q8_ISSUE(0, 1, 2, blk(b + 2), stride, bt(b + 2), bstride);
          _tile_stored(3, isum[1], 64);
          q8_scale_add(blk(b + 1), stride, dx(b + 1), isum[1], acc);
        }
      }
      for (int r = 0; r < 16; ++r) _mm512_store_ps(tmp + r * 16, acc[r]);
      store_tile_result(tmp, r0, t0, n_tok, y, ldy);
    }
  }
  _tile_release();
}

void amx_dot_rows(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                  int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy) {
  const int64_t rows16 = use_tiles(f, n_tok, n_in) ? rows / 16 * 16 : 0;
  if (rows16 > 0) {
    const uint8_t* vnni = packed + avx_part(f, n_tok, n_in);
    // Per format: bf16 pipelined only when asked, Q8_0 simple only when asked (kernel_ops.h).
    const AmxKernel kernel = amx_kernel();
    if (f == WeightFormat::kBF16) {
      (kernel == AmxKernel::kPipelined ? amx_bf16_pipelined : amx_bf16)(w, row_stride, rows16, n_in,
                                                                        vnni, n_tok, y, ldy);
    } else {
      const auto* scales = reinterpret_cast<const float*>(vnni + vnni_part(f, n_tok, n_in));
      (kernel == AmxKernel::kSimple ? amx_q8 : amx_q8_pipelined)(w, row_stride, rows16, n_in, vnni,
                                                                 scales, n_tok, y, ldy);
    }
  }
  if (rows16 < rows)
    avx512_ops().dot_rows(f, w + rows16 * row_stride, row_stride, rows - rows16, n_in, packed,
                          n_tok, y + rows16, ldy);
}

// Q8_0 rows in groups of 16 (core/q8_rows16.h) with tiles: per block, A = 16 tokens x the
// block's 32 int8 activations (the q8 rows part, stride n), B = the group's 512 bytes of the block
// as they lie in memory (8 quads x 16 rows x 4 unsigned bytes: the VNNI order of an int8 B tile),
// C = A . B by TDPBSUD (signed x unsigned, exact int32) = [16 tokens x 16 rows]. Each token row
// of C gets its correction -128 sum q_x and is scaled by d_x[token] x d_w (the group's 16 scales
// of the block, one 32-byte load) into one fp32 accumulator per token: the accumulators are
// already in y's row order. Tile sets alternate between even and odd blocks (block b+1's
// multiply runs while block b is scaled), as in amx_q8_pipelined.
#define HM_Q8G_ISSUE(C, A, B, a_ptr, n, b_ptr) \
  do {                                         \
    _tile_zero(C);                             \
    _tile_loadd(A, (a_ptr), (n));              \
    _tile_loadd(B, (b_ptr), 64);               \
    _tile_dpbsud(C, A, B);                     \
  } while (0)

void amx_q8_groups(const uint8_t* w, int64_t groups, int64_t n_in, const int8_t* a_rows,
                   const float* dxs, const int32_t* corr1, int n_tok, float* y, int64_t ldy) {
  load_q8_tile_sets();  // here C is 16 tokens x 16 rows, A tokens, B the weights (16 rows x 4)
  const int64_t nt16 = round_to(n_tok, 16), nb = n_in / 32;
  const std::size_t group_bytes = kQ8GroupRows * row_bytes(WeightFormat::kQ8_0, n_in);
  alignas(64) int32_t isum[2][256];
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* grp = w + g * group_bytes;
    const uint8_t* quants = grp + nb * 2 * kQ8GroupRows;
    for (int64_t t0 = 0; t0 < nt16; t0 += 16) {
      const int nt = static_cast<int>(std::min<int64_t>(16, n_tok - t0));
      __m512 acc[16];
      for (auto& v : acc) v = _mm512_setzero_ps();
      const int8_t* a = a_rows + t0 * n_in;
      // acc[t] += (C[t] - 128 sum q_x[t]) * d_w * d_x[t] for block b (isum: its stored C)
      auto scale_add = [&](int64_t b, const int32_t* c) {
        const __m512 dw = _mm512_cvtph_ps(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + b * 2 * kQ8GroupRows)));
        for (int t = 0; t < nt; ++t) {
          const __m512i s = _mm512_add_epi32(_mm512_load_si512(c + t * 16),
                                             _mm512_set1_epi32(corr1[(t0 + t) * nb + b]));
          const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(dxs[b * nt16 + t0 + t]));
          acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[t]);
        }
      };
      HM_Q8G_ISSUE(0, 1, 2, a, n_in, quants);
      for (int64_t b = 0; b < nb; b += 2) {
        if (b + 1 < nb)
          HM_Q8G_ISSUE(3, 4, 5, a + (b + 1) * 32, n_in, quants + (b + 1) * kQ8GroupBlockBytes);
        _tile_stored(0, isum[0], 64);
        scale_add(b, isum[0]);
        if (b + 1 < nb) {
          if (b + 2 < nb)
            HM_Q8G_ISSUE(0, 1, 2, a + (b + 2) * 32, n_in, quants + (b + 2) * kQ8GroupBlockBytes);
          _tile_stored(3, isum[1], 64);
          scale_add(b + 1, isum[1]);
        }
      }
      for (int t = 0; t < nt; ++t) _mm512_storeu_ps(y + (t0 + t) * ldy + g * kQ8GroupRows, acc[t]);
    }
  }
  _tile_release();
}

void amx_dot_groups_q8(const uint8_t* w, int64_t groups, int64_t n_in, const uint8_t* packed,
                       int n_tok, float* y, int64_t ldy) {
  if (!use_tiles(WeightFormat::kQ8_0, n_tok, n_in)) {
    avx512_ops().dot_groups_q8(w, groups, n_in, packed, n_tok, y, ldy);
    return;
  }
  const WeightFormat f = WeightFormat::kQ8_0;
  const uint8_t* vnni = packed + avx_part(f, n_tok, n_in);
  const auto* dxs = reinterpret_cast<const float*>(vnni + vnni_part(f, n_tok, n_in));
  const auto* a_rows = reinterpret_cast<const int8_t*>(packed + q8_rows_part(n_tok, n_in));
  amx_q8_groups(w, groups, n_in, a_rows, dxs, q8_corrections(packed, n_tok, n_in), n_tok, y, ldy);
}

}  // namespace

const KernelOps& amx_ops() {
  static const KernelOps ops{Isa::kAmx, amx_packed_bytes, amx_pack, amx_dot_rows,
                             amx_dot_groups_q8};
  return ops;
}

}  // namespace hm::cpu
