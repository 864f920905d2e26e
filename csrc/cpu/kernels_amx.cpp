// [NOTE] AMX variant (built with -mamx-tile -mamx-bf16 -mamx-int8; run only after Linux granted
// tile permission, see isa.cpp). For groups of at least kAmxMinTokens tokens it uses tiles; smaller
// groups, row tails (rows % 16) and bf16 rows whose length is not a multiple of 32 take the AVX512
// code, which reads the same packed buffer's first part.
// The weights stay in their GGUF layout (no repacked copy, no extra memory): they are tile A
//   (16 weight rows x 64 bytes, stride = the row length), and the tokens' activations, repacked once
//   per group into VNNI order, are tile B. C = W . X^T is [16 rows x 16 tokens].
// BF16: A = 16 rows x 32 bf16, B = 16 pairs x 16 tokens x 2 bf16, TDPBF16PS accumulates over all
//   of n_in in fp32; two token tiles share each weight tile.
// Q8_0: A = 16 rows x one block's 32 int8 (the 2-byte scale in front is skipped by the address),
//   B = 8 quads x 16 tokens x 4 int8; per block TDPBSSD gives exact int32 sums that are stored
//   and scaled by d_w[row] * d_x[token] into fp32 accumulators (16 zmm registers).
// Extra packed memory per group: n_tok16 x n x (2 bytes bf16 | 1.125 bytes q8); weights: none.
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 header false positives
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"

namespace hm::cpu {
namespace {

inline int64_t round_to(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

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

// Offsets inside the packed buffer: [avx512 part][VNNI part][q8 scales].
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
  if (f == WeightFormat::kQ8_0) bytes += static_cast<std::size_t>(n / 32) * round_to(n_tok, 16) * 4;
  return bytes;
}

void amx_pack(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1, const float* const* src,
              uint8_t* packed) {
  avx512_ops().pack(f, n_tok, n, k0, k1, src, packed);
  if (!use_tiles(f, n_tok, n)) return;
  const int64_t nt16 = round_to(n_tok, 16);
  uint8_t* vnni = packed + avx_part(f, n_tok, n);
  if (f == WeightFormat::kBF16) {
    // Pair p = k / 2 of token t at uint16 index (p * nt16 + t) * 2 + k % 2; padded tokens are 0.
    auto* v = reinterpret_cast<uint16_t*>(vnni);
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t t = 0; t < nt16; ++t)
        v[((k / 2) * nt16 + t) * 2 + (k & 1)] = t < n_tok ? f32_to_bf16(src[t][k - k0]) : 0;
    return;
  }
  // Quad j = k / 4 of token t at byte (j * nt16 + t) * 4 + k % 4; scale of block b, token t at
  // float index b * nt16 + t. Taken from the token-major blocks just written.
  auto* v = reinterpret_cast<int8_t*>(vnni);
  float* scales = reinterpret_cast<float*>(vnni + vnni_part(f, n_tok, n));
  const auto* blocks = reinterpret_cast<const QuantBlockQ8*>(packed);
  const int64_t nb = n / 32;
  for (int64_t b = k0 / 32; b < (k1 + 31) / 32; ++b)
    for (int64_t t = 0; t < nt16; ++t) {
      const QuantBlockQ8* blk = t < n_tok ? &blocks[t * nb + b] : nullptr;
      scales[b * nt16 + t] = blk ? blk->d : 0.f;
      for (int i = 0; i < 32; ++i) {
        const int64_t k = b * 32 + i;
        v[((k / 4) * nt16 + t) * 4 + (k & 3)] = blk ? blk->q[i] : 0;
      }
    }
}

void store_tile_result(const float* tmp /*[16 rows][16 tokens]*/, int64_t r0, int64_t t0, int n_tok,
                       float* y, int64_t ldy) {
  const int nt = static_cast<int>(std::min<int64_t>(16, n_tok - t0));
  for (int t = 0; t < nt; ++t)
    for (int r = 0; r < 16; ++r) y[(t0 + t) * ldy + r0 + r] = tmp[r * 16 + t];
}

void amx_bf16(const uint8_t* w, std::size_t stride, int64_t rows16, int64_t n_in,
              const uint8_t* vnni, int n_tok, float* y, int64_t ldy) {
  TileConfig cfg;
  for (int i = 0; i < 5; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
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
      _tile_stored(0, tmp[0], 64);
      store_tile_result(tmp[0], r0, t0, n_tok, y, ldy);
      if (two) {
        _tile_stored(1, tmp[1], 64);
        store_tile_result(tmp[1], r0, t0 + 16, n_tok, y, ldy);
      }
    }
  }
  _tile_release();
}

void amx_q8(const uint8_t* w, std::size_t stride, int64_t rows16, int64_t n_in,
            const uint8_t* vnni, const float* scales, int n_tok, float* y, int64_t ldy) {
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

void amx_dot_rows(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                  int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy) {
  const int64_t rows16 = use_tiles(f, n_tok, n_in) ? rows / 16 * 16 : 0;
  if (rows16 > 0) {
    const uint8_t* vnni = packed + avx_part(f, n_tok, n_in);
    if (f == WeightFormat::kBF16) {
      amx_bf16(w, row_stride, rows16, n_in, vnni, n_tok, y, ldy);
    } else {
      const auto* scales = reinterpret_cast<const float*>(vnni + vnni_part(f, n_tok, n_in));
      amx_q8(w, row_stride, rows16, n_in, vnni, scales, n_tok, y, ldy);
    }
  }
  if (rows16 < rows)
    avx512_ops().dot_rows(f, w + rows16 * row_stride, row_stride, rows - rows16, n_in, packed,
                          n_tok, y + rows16, ldy);
}

}  // namespace

const KernelOps& amx_ops() {
  static const KernelOps ops{Isa::kAmx, amx_packed_bytes, amx_pack, amx_dot_rows};
  return ops;
}

}  // namespace hm::cpu
