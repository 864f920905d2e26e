// [NOTE] AVX512 variant (built with -mavx512bf16 -mavx512vnni, run when CPUID allows it).
// At T = 1 the layer is pure weight streaming, so both formats are written to keep the memory
// system busy: 4 weight rows per pass (4 independent streams, 4 x NT accumulator chains), few
// instructions per weight byte (so the out-of-order window spans many cache lines), and software
// prefetch of each stream prefetch_bytes() ahead (HYBRID_MOE_PREFETCH; the Q8_0 row-group code:
// q8_group_prefetch_bytes(), 4096 by default). Row order
// (HYBRID_MOE_ROW_ORDER, kernel_ops.h): by default pass p takes rows 4p..4p+3; optionally the
// call's rows are cut into 4 contiguous runs and pass p takes row p of each run (each stream one
// sequential range). Either way the prefetcher runs on from a row's end into the row that the
// same stream reads next, as the loads will.
// BF16: activations rounded to bf16 once per group, dot products with vdpbf16ps (fp32 sums),
//   32 values per instruction; a row tail (n % 32) is read with a masked load, the activation
//   buffer is zero-padded to 32. Blocking: 4 weight rows x up to 4 tokens share each load.
// Q8_0: reads the GGUF blocks in place (34 bytes, no repacking), two blocks per 512-bit register.
//   vpdpbusd multiplies u8 x s8, so the activations are stored as u8 (q + 128, q in [-127, 127])
//   and the weights stay signed: sum (q_x + 128) q_w - 128 sum q_w = sum q_x q_w exactly, where
//   the correction 128 sum q_w is one more vpdpbusd per weight register, shared by all tokens
//   (this replaces the per-token sign trick). Per block pair and row: the two fp16 scales become
//   one 16-lane vector (lanes 0-7 d_w[b], 8-15 d_w[b+1]); the activation scales are stored
//   pre-expanded the same way, so scaling is one multiply + one fma per pair and token.
//   That is the "pair" code (the default). The "quad" code (HYBRID_MOE_Q8_KERNEL=quad) reads 4
//   blocks (136 bytes) per step and turns the roles around: weights made unsigned (q ^ 0x80, one
//   xor per register), activations signed, the correction -128 sum q_x precomputed per token; the
//   two dot products of a step are folded to 4 lanes per block (two 128-bit shuffles + one add,
//   then the correction in the same layout) so that convert, scale product and fma run once per 4
//   blocks, and the 4 weight scales come from one two-source word permute + one convert. At T = 1
//   that is ~16 vector instructions per 136 bytes and row where pair needs ~18 (two blocks: 9
//   each); measured 1.1-1.2x pair's rate from L2 on the dev machine (bench/bench_q8_rows.cpp).
//   Packed Q8 buffer per group: [QuantBlockQ8 n_tok x nb (what the AMX variant repacks)]
//   [pair: u8 activations n_tok x n][pair: expanded scales n_tok x nb x 8 floats]
//   [quad and groups: s8 activations n_tok x n][quad: int32 corrections n_tok x nb x 4]
//   [quad: scales x 4][groups: int32 corrections n_tok x nb].
// Q8_0 rows in groups of 16 (core/q8_rows16.h, dot_groups_q8): see q8_group_block.
// GCC 12's _mm512_reduce_add_ps trips -Wuninitialized inside its own header (false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/check.h"
#include "core/env_choice.h"
#include "core/q8_rows16.h"
#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"
#include "cpu/quantize_q8_simd.h"

namespace hm::cpu {
namespace {

inline int64_t round32(int64_t n) {
  return (n + 31) / 32 * 32;
}

constexpr int kRows = 4;  // weight rows per pass

// Byte offsets of the parts of a Q8 packed buffer (see [NOTE]). Every kernel's parts are
// reserved (a few KiB per token); pack() writes the blocks, the s8 activations and the one-int
// corrections (the q8_rows16 group code's inputs) and the parts of q8_kernel()'s choice.
struct Q8Parts {
  std::size_t u8, scales;     // pair: u8 activations, scales x 8 per block
  std::size_t s8, corr, dx4;  // quad (s8 also groups): s8 activations, int32 corrections x 4, ...
  std::size_t corr1;          // groups: -128 x (sum of the block's s8 activations), 1 per block
  std::size_t total;
};
inline Q8Parts q8_parts(int n_tok, int64_t n) {
  const auto nt = static_cast<std::size_t>(n_tok);
  const auto nb = static_cast<std::size_t>(n / kQ8BlockSize);
  const std::size_t act = align_up(nt * static_cast<std::size_t>(n), 64);
  Q8Parts p;
  p.u8 = align_up(nt * nb * sizeof(QuantBlockQ8), 64);
  p.scales = p.u8 + act;
  p.s8 = p.scales + align_up(nt * nb * 8 * sizeof(float), 64);
  p.corr = p.s8 + act;
  p.dx4 = p.corr + nt * nb * 4 * sizeof(int32_t);
  p.corr1 = p.dx4 + nt * nb * 4 * sizeof(float);
  p.total = p.corr1 + nt * nb * sizeof(int32_t);
  return p;
}

std::size_t avx_packed_bytes(WeightFormat f, int n_tok, int64_t n) {
  if (f == WeightFormat::kBF16) return static_cast<std::size_t>(n_tok) * round32(n) * 2;
  return q8_parts(n_tok, n).total;
}

void avx_pack(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1, const float* const* src,
              uint8_t* packed) {
  if (f == WeightFormat::kQ8_0) {
    const int64_t nb = n / kQ8BlockSize;
    const Q8Parts parts = q8_parts(n_tok, n);
    const bool quad = q8_kernel() == Q8Kernel::kQuad;
    for (int t = 0; t < n_tok; ++t) {
      auto* blocks = reinterpret_cast<QuantBlockQ8*>(packed) + t * nb;
      uint8_t* u8 = packed + parts.u8 + static_cast<std::size_t>(t) * n;
      float* scales = reinterpret_cast<float*>(packed + parts.scales) + t * nb * 8;
      auto* s8 = reinterpret_cast<int8_t*>(packed + parts.s8) + static_cast<std::size_t>(t) * n;
      int32_t* corr = reinterpret_cast<int32_t*>(packed + parts.corr) + t * nb * 4;
      float* dx4 = reinterpret_cast<float*>(packed + parts.dx4) + t * nb * 4;
      int32_t* corr1 = reinterpret_cast<int32_t*>(packed + parts.corr1) + t * nb;
      for (int64_t k = k0; k < k1; k += kQ8BlockSize) {
        const int64_t b = k / kQ8BlockSize;
        QuantBlockQ8& blk = blocks[b];
        quantize_block_q8_avx512(src[t] + (k - k0), &blk);
        std::memcpy(s8 + k, blk.q, kQ8BlockSize);
        int sum = 0;
        for (int i = 0; i < kQ8BlockSize; ++i) sum += blk.q[i];
        corr1[b] = -128 * sum;
        if (quad) {
          // lane i of the folded sum adds vpdpbusd lanes i and i + 4 (activations 4i..4i+3 and
          // 16+4i..16+4i+3); its correction is -128 x their sum
          for (int i = 0; i < 4; ++i) {
            int sum = 0;
            for (int j = 0; j < 4; ++j) sum += blk.q[4 * i + j] + blk.q[16 + 4 * i + j];
            corr[b * 4 + i] = -128 * sum;
          }
          for (int i = 0; i < 4; ++i) dx4[b * 4 + i] = blk.d;
        } else {
          for (int i = 0; i < kQ8BlockSize; ++i)
            u8[k + i] = static_cast<uint8_t>(static_cast<int>(blk.q[i]) + 128);
          for (int i = 0; i < 8; ++i) scales[b * 8 + i] = blk.d;
        }
      }
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

inline void prefetch_line(const void* p, PrefetchHint hint) {
  switch (hint) {  // fixed per process: the branch is always predicted
    case PrefetchHint::kL2:
      _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
      break;
    case PrefetchHint::kNonTemporal:
      _mm_prefetch(static_cast<const char*>(p), _MM_HINT_NTA);
      break;
    default:
      _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
      break;
  }
}

// The R weight rows of one pass and where their streams continue (see [NOTE], row order).
struct PassRows {
  const uint8_t* w;     // row 0 of the pass
  std::size_t step;     // bytes from row j to row j + 1 of the pass
  std::size_t next;     // bytes from a row to the row after it in its stream (next pass)
  int64_t yr;           // y index distance between rows j and j + 1 of the pass
  int64_t passes_left;  // passes of the call from this one on (bounds the prefetch)
  const uint8_t* row(int j) const { return w + j * step; }
};

// Software prefetch of R row streams, prefetch_bytes() ahead of the loads: stream j is row j of
// the pass, `row_len` bytes long, continuing `next` bytes further in the next pass, up to
// `passes_left` passes, so nothing beyond the caller's rows is fetched. The prefetch position is
// one pointer (stream 0's; stream j is `step` * j further) moved forward per step, with one
// compare against the end of the call's rows: this runs once per weight step, so its scalar work
// is part of the per-byte cost (without any software prefetch the L2-resident rate is ~15% higher).
template <int R>
struct RowPrefetcher {
  const char* p = nullptr;    // next prefetch point of stream 0
  const char* end = nullptr;  // stream 0's position one pass past the last (no prefetch there)
  std::size_t step_j;         // bytes between streams
  std::size_t row_len, off;   // bytes of a row; offset of p within its row
  std::size_t wrap;           // next - row_len: from a row's end to its stream's next row
  bool on;
  PrefetchHint hint;
  bool every_line = prefetch_every_line();
  inline void fetch(const char* q) const { prefetch_line(q, hint); }
  RowPrefetcher(const PassRows& pr, std::size_t row_len_, bool enabled, WeightFormat f)
      : step_j(pr.step),
        row_len(row_len_),
        off(static_cast<std::size_t>(prefetch_bytes())),
        wrap(pr.next - row_len_),
        hint(prefetch_hint(f)) {
    on = enabled && off > 0;
    int64_t ahead = 0;  // passes ahead of the current one
    while (on && off >= row_len) {
      off -= row_len;
      ++ahead;
    }
    const char* w = reinterpret_cast<const char*>(pr.w);
    p = w + ahead * pr.next + off;
    end = w + pr.passes_left * pr.next;
    if (ahead >= pr.passes_left) on = false;
  }
  // Call once per step of `bytes` consumed in each row (a compile-time constant at every call).
  // Every line (default): ceil(bytes / 64) points 64 bytes apart from the step's prefetch position
  // (Q8_0 pair step of 68 bytes: 2, quad step of 136: 3), so no line of a stream is skipped (one
  // per step skipped one line in 17 of a Q8_0 row). A fixed count per step: exactly one point
  // per line (a loop whose trip count varies from step to step) measured ~10% slower for pair
  // from L2 on the dev machine. HYBRID_MOE_PREFETCH_LINES=step: one point per step (A/B runs).
  inline void step(std::size_t bytes) {
    if (!on) return;
    if (p < end)
      for (int j = 0; j < R; ++j) {
        const char* q = p + j * step_j;
        fetch(q);
        if (every_line)
          for (std::size_t k = 64; k < bytes; k += 64) fetch(q + k);
      }
    p += bytes;
    off += bytes;
    if (off >= row_len) {
      off -= row_len;
      p += wrap;
    }
  }
};

// y[t * ldy + r * yr] for the R rows of pass pr x NT tokens.
template <int R, int NT>
inline void bf16_block(const PassRows& pr, int64_t n_in, const uint16_t* act, int64_t act_stride,
                       float* y, int64_t ldy, bool pf) {
  __m512 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  RowPrefetcher<R> pre(pr, static_cast<std::size_t>(n_in) * 2, pf, WeightFormat::kBF16);
  int64_t k = 0;
  for (; k + 32 <= n_in; k += 32) {
    pre.step(64);
    __m512i a[NT];
    for (int t = 0; t < NT; ++t) a[t] = _mm512_loadu_si512(act + t * act_stride + k);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_loadu_si512(pr.row(r) + k * 2);
      for (int t = 0; t < NT; ++t)
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)wv, (__m512bh)a[t]);
    }
  }
  if (k < n_in) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (n_in - k)) - 1);
    __m512i a[NT];
    for (int t = 0; t < NT; ++t) a[t] = _mm512_loadu_si512(act + t * act_stride + k);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(m, pr.row(r) + k * 2);
      for (int t = 0; t < NT; ++t)
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)wv, (__m512bh)a[t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * ldy + r * pr.yr] = _mm512_reduce_add_ps(acc[r][t]);
}

// Word indices for q8_pair's scales: words 0-7 <- word 0 (d of block b, bytes 0-1 of the pair),
// words 8-15 <- word 17 (d of block b+1, bytes 34-35).
inline __m512i q8_scale_index() {
  return _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                          17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0);
}

// One block pair of a weight row (68 bytes at blk: d0, q0[32], d1, q1[32]; no byte past blk + 68
// is read). q: q0 in bytes 0-31, q1 in bytes 32-63; returns d0 in lanes 0-7, d1 in lanes 8-15.
// Two full-width loads plus one merge and one word permute: fewer port-5 uops than broadcasting
// the two scales from scalar loads (this runs once per 68 weight bytes and row at T = 1).
inline __m512 q8_pair(const uint8_t* blk, __m512i idx, __m512i* q) {
  const __m512i raw = _mm512_loadu_si512(blk);  // bytes 0-63
  // bytes 2-65, then bytes 36-67 merged into lanes 32-63 (masked lanes are not read)
  *q = _mm512_mask_loadu_epi8(_mm512_loadu_si512(blk + 2), 0xFFFFFFFF00000000ull, blk + 4);
  return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, raw)));
}

// Q8: R rows x NT tokens. u8: token 0's u8 activations (token t at + t * n_in); sc: token 0's
// expanded scales (token t at + t * nb * 8).
template <int R, int NT>
inline void q8_block(const PassRows& pr, int64_t nb, const uint8_t* u8, const float* sc, float* y,
                     int64_t ldy, bool pf) {
  const int64_t n_in = nb * kQ8BlockSize;
  __m512 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i idx = q8_scale_index();
  RowPrefetcher<R> pre(pr, static_cast<std::size_t>(nb) * kQ8BlockBytes, pf, WeightFormat::kQ8_0);
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    pre.step(2 * kQ8BlockBytes);
    __m512i xv[NT];
    __m512 dx[NT];
    for (int t = 0; t < NT; ++t) {
      xv[t] = _mm512_loadu_si512(u8 + t * n_in + b * kQ8BlockSize);
      dx[t] = _mm512_loadu_ps(sc + (t * nb + b) * 8);
    }
    for (int r = 0; r < R; ++r) {
      __m512i q;
      const __m512 dw = q8_pair(pr.row(r) + b * kQ8BlockBytes, idx, &q);
      // -128 * (sum of each 4 weights): start value of every token's vpdpbusd.
      const __m512i neg_corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c128, q));
      for (int t = 0; t < NT; ++t) {
        const __m512i dp = _mm512_dpbusd_epi32(neg_corr, xv[t], q);
        const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(dp), dx[t]);
        acc[r][t] = _mm512_fmadd_ps(f, dw, acc[r][t]);
      }
    }
  }
  if (b < nb) {  // odd block count: the last block in the low 256 bits, high lanes left as they are
    __m512i xv[NT];
    __m512 dx[NT];
    for (int t = 0; t < NT; ++t) {
      xv[t] = _mm512_zextsi256_si512(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u8 + t * n_in + b * kQ8BlockSize)));
      dx[t] = _mm512_maskz_loadu_ps(0x00ff, sc + (t * nb + b) * 8);
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = pr.row(r) + b * kQ8BlockBytes;
      const __m512i q =
          _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)));
      uint16_t d0;
      std::memcpy(&d0, blk, 2);
      const __m512 dw = _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(d0)));
      const __m512i neg_corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c128, q));
      for (int t = 0; t < NT; ++t) {
        const __m512i dp = _mm512_dpbusd_epi32(neg_corr, xv[t], q);
        const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(dp), dx[t]);
        acc[r][t] = _mm512_mask3_fmadd_ps(f, dw, acc[r][t], 0x00ff);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * ldy + r * pr.yr] = _mm512_reduce_add_ps(acc[r][t]);
}

// Word indices for q8_quad's scales from two 64-byte loads (a: bytes 0-63, b: bytes 68-131 of a
// 4-block group): words 0-3 <- d0 (a word 0), 4-7 <- d1 (a word 17), 8-11 <- d2 (b word 0),
// 12-15 <- d3 (b word 17); words 16-31 unused.
inline __m512i q8_quad_scale_index() {
  return _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                          49, 49, 49, 49, 32, 32, 32, 32, 17, 17, 17, 17, 0, 0, 0, 0);
}

// Q8 "quad" kernel: R rows x NT tokens, 4 blocks (136 weight bytes per row) per step. Weights are
// made unsigned by flipping the sign bit (q + 128 = q ^ 0x80) and multiplied with the signed
// activations: sum (q_w + 128) q_x = sum q_w q_x + 128 sum q_x, where -128 sum q_x is precomputed
// in pack(). The two dot products of a step (16 lanes each: 8 per block) are folded into one
// register of 4 lanes per block (two 128-bit shuffles + one add) and the correction, stored in
// that folded layout (4 int32 per block), is added once, so the int -> float convert, the scale
// product and the fma run once per 4 blocks; the 4 weight scales come from one two-source word
// permute and one convert.
// s8: token 0's activations (token t at + t * n_in); corr: token 0's corrections (4 int32 per
// block, token t at + t * nb * 4); dx4: token 0's scales (4 floats per block, + t * nb * 4);
// blocks: token 0's QuantBlockQ8 (for the tail's scale, + t * nb).
template <int R, int NT>
inline void q8_quad_block(const PassRows& pr, int64_t nb, const int8_t* s8, const int32_t* corr,
                          const float* dx4, const QuantBlockQ8* blocks, float* y, int64_t ldy,
                          bool pf) {
  const int64_t n_in = nb * kQ8BlockSize;
  __m512 acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i idx = q8_quad_scale_index();
  const __m512i zero = _mm512_setzero_si512();
  RowPrefetcher<R> pre(pr, static_cast<std::size_t>(nb) * kQ8BlockBytes, pf, WeightFormat::kQ8_0);
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    pre.step(4 * kQ8BlockBytes);
    __m512i x0[NT], x1[NT], cz[NT];
    __m512 dx[NT];
    for (int t = 0; t < NT; ++t) {
      x0[t] = _mm512_loadu_si512(s8 + t * n_in + b * kQ8BlockSize);
      x1[t] = _mm512_loadu_si512(s8 + t * n_in + b * kQ8BlockSize + 64);
      cz[t] = _mm512_loadu_si512(corr + (t * nb + b) * 4);
      dx[t] = _mm512_loadu_ps(dx4 + (t * nb + b) * 4);
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = pr.row(r) + b * kQ8BlockBytes;
      const __m512i raw0 = _mm512_loadu_si512(blk);
      const __m512i raw1 = _mm512_loadu_si512(blk + kQ8BlockBytes * 2);
      // pair 0: bytes 2-33 and 36-67; pair 1: the same 68 bytes further
      const __m512i q0 = _mm512_xor_si512(
          _mm512_mask_loadu_epi8(_mm512_loadu_si512(blk + 2), 0xFFFFFFFF00000000ull, blk + 4),
          c128);
      const __m512i q1 = _mm512_xor_si512(
          _mm512_mask_loadu_epi8(_mm512_loadu_si512(blk + 70), 0xFFFFFFFF00000000ull, blk + 72),
          c128);
      const __m512 dw =
          _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(raw0, idx, raw1)));
      for (int t = 0; t < NT; ++t) {
        const __m512i d0 = _mm512_dpbusd_epi32(zero, q0, x0[t]);
        const __m512i d1 = _mm512_dpbusd_epi32(zero, q1, x1[t]);
        // 128-bit units: d0 = [b0 b0 b1 b1], d1 = [b2 b2 b3 b3] -> [b0 b1 b2 b3], + correction
        const __m512i z = _mm512_add_epi32(_mm512_add_epi32(_mm512_shuffle_i32x4(d0, d1, 0x88),
                                                            _mm512_shuffle_i32x4(d0, d1, 0xDD)),
                                           cz[t]);
        acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(z), dx[t]), dw, acc[r][t]);
      }
    }
  }
  for (; b < nb; ++b) {  // nb % 4 tail blocks, one at a time in the low 8 lanes
    pre.step(kQ8BlockBytes);
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = pr.row(r) + b * kQ8BlockBytes;
      const __m256i q = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)), _mm256_set1_epi8(-128));
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      const __m256 dw = _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(dh)));
      for (int t = 0; t < NT; ++t) {
        // lanes 0-3: the block's corrections (lanes i and i + 4 share one), lanes 4-7: 0
        const __m256i c = _mm256_zextsi128_si256(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(corr + (t * nb + b) * 4)));
        const __m256i x =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s8 + t * n_in + b * kQ8BlockSize));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(c, q, x)),
                                       _mm256_set1_ps(blocks[t * nb + b].d));
        acc[r][t] = _mm512_mask3_fmadd_ps(_mm512_zextps256_ps512(f), _mm512_zextps256_ps512(dw),
                                          acc[r][t], 0x00ff);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * ldy + r * pr.yr] = _mm512_reduce_add_ps(acc[r][t]);
}

// The R rows of pass pr, all n_tok tokens in chunks of 4 (weights are prefetched on the first
// chunk only; the later chunks find the R rows in L1/L2).
template <int R>
void bf16_rows(const PassRows& pr, int64_t n_in, const uint16_t* act, int64_t act_stride, int n_tok,
               float* y, int64_t ldy) {
  int t = 0;
  for (; t + 4 <= n_tok; t += 4)
    bf16_block<R, 4>(pr, n_in, act + t * act_stride, act_stride, y + t * ldy, ldy, t == 0);
  const uint16_t* a = act + t * act_stride;
  float* yt = y + t * ldy;
  const bool pf = t == 0;
  switch (n_tok - t) {
    case 3:
      bf16_block<R, 3>(pr, n_in, a, act_stride, yt, ldy, pf);
      break;
    case 2:
      bf16_block<R, 2>(pr, n_in, a, act_stride, yt, ldy, pf);
      break;
    case 1:
      bf16_block<R, 1>(pr, n_in, a, act_stride, yt, ldy, pf);
      break;
    default:
      break;
  }
}

template <int R>
void q8_rows(const PassRows& pr, int64_t nb, const uint8_t* u8, const float* sc, int n_tok,
             float* y, int64_t ldy) {
  const int64_t n_in = nb * kQ8BlockSize;
  int t = 0;
  for (; t + 4 <= n_tok; t += 4)
    q8_block<R, 4>(pr, nb, u8 + t * n_in, sc + t * nb * 8, y + t * ldy, ldy, t == 0);
  const uint8_t* u = u8 + t * n_in;
  const float* s = sc + t * nb * 8;
  float* yt = y + t * ldy;
  const bool pf = t == 0;
  switch (n_tok - t) {
    case 3:
      q8_block<R, 3>(pr, nb, u, s, yt, ldy, pf);
      break;
    case 2:
      q8_block<R, 2>(pr, nb, u, s, yt, ldy, pf);
      break;
    case 1:
      q8_block<R, 1>(pr, nb, u, s, yt, ldy, pf);
      break;
    default:
      break;
  }
}

template <int R>
void q8_quad_rows(const PassRows& pr, int64_t nb, const int8_t* s8, const int32_t* corr,
                  const float* dx4, const QuantBlockQ8* blocks, int n_tok, float* y, int64_t ldy) {
  const int64_t n_in = nb * kQ8BlockSize;
  int t = 0;
  for (; t + 4 <= n_tok; t += 4)
    q8_quad_block<R, 4>(pr, nb, s8 + t * n_in, corr + t * nb * 4, dx4 + t * nb * 4, blocks + t * nb,
                        y + t * ldy, ldy, t == 0);
  const int8_t* s = s8 + t * n_in;
  const int32_t* c = corr + t * nb * 4;
  const float* d = dx4 + t * nb * 4;
  const QuantBlockQ8* bl = blocks + t * nb;
  float* yt = y + t * ldy;
  const bool pf = t == 0;
  switch (n_tok - t) {
    case 3:
      q8_quad_block<R, 3>(pr, nb, s, c, d, bl, yt, ldy, pf);
      break;
    case 2:
      q8_quad_block<R, 2>(pr, nb, s, c, d, bl, yt, ldy, pf);
      break;
    case 1:
      q8_quad_block<R, 1>(pr, nb, s, c, d, bl, yt, ldy, pf);
      break;
    default:
      break;
  }
}

// Runs body<R>(pass, y of the pass) over all rows: full passes of kRows rows in the row order of
// HYBRID_MOE_ROW_ORDER (see [NOTE]), then one pass of the rows % kRows tail rows.
template <typename Body>
void for_each_pass(const uint8_t* w, std::size_t stride, int64_t rows, float* y, Body&& body) {
  const int64_t n_pass = rows / kRows, tail = rows % kRows;
  const bool streams = row_order() == RowOrder::kStreams;
  for (int64_t p = 0; p < n_pass; ++p) {
    const PassRows pr =
        streams ? PassRows{w + p * stride, n_pass * stride, stride, n_pass, n_pass - p}
                : PassRows{w + p * kRows * stride, stride, kRows * stride, 1, n_pass - p};
    body(std::integral_constant<int, kRows>(), pr, y + (streams ? p : p * kRows));
  }
  const PassRows pt{w + n_pass * kRows * stride, stride, tail * stride, 1, 1};
  float* yt = y + n_pass * kRows;
  switch (tail) {
    case 3:
      body(std::integral_constant<int, 3>(), pt, yt);
      break;
    case 2:
      body(std::integral_constant<int, 2>(), pt, yt);
      break;
    case 1:
      body(std::integral_constant<int, 1>(), pt, yt);
      break;
    default:
      break;
  }
}

// Q8_0 rows in groups of 16 (core/q8_rows16.h), one group x NT tokens. Per block: 8 weight loads
// of 64 bytes (values 4j..4j+3 of the 16 rows, unsigned), each dotted with the broadcast 4 signed
// activations of every token (vpdpbusd: one int32 per row, two chains per token started at the
// block's correction -128 x sum q_x and at 0), then one convert and one fma with d_w (the 16 rows'
// scales from one 32-byte load) x d_x. At T = 1 that is ~21 vector instructions per 544 weight
// bytes, where the GGUF-row codes need ~80 (pair) or ~64 (quad): the scaling runs once per block
// for 16 rows instead of once per block and row. pf: software prefetch distance in bytes (0: off).
template <int NT>
inline void q8_group_block(const uint8_t* grp, int64_t nb, const int8_t* s8, int64_t n_in,
                           const int32_t* corr1, const QuantBlockQ8* blocks, float* y, int64_t ldy,
                           int pf, PrefetchHint hint) {
  const uint8_t* quants = grp + nb * 2 * kQ8GroupRows;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = quants + b * kQ8GroupBlockBytes;
    if (pf > 0)
      for (int o = 0; o < kQ8GroupBlockBytes; o += 64) prefetch_line(qb + pf + o, hint);
    __m512i wv[8];
    for (int j = 0; j < 8; ++j) wv[j] = _mm512_loadu_si512(qb + 64 * j);
    const __m512 dw =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + b * 32)));
    for (int t = 0; t < NT; ++t) {
      const int8_t* x = s8 + t * n_in + b * kQ8BlockSize;
      __m512i s0 = _mm512_set1_epi32(corr1[t * nb + b]), s1 = _mm512_setzero_si512();
      for (int j = 0; j < 8; j += 2) {
        int32_t x0, x1;
        std::memcpy(&x0, x + 4 * j, 4);
        std::memcpy(&x1, x + 4 * j + 4, 4);
        s0 = _mm512_dpbusd_epi32(s0, wv[j], _mm512_set1_epi32(x0));
        s1 = _mm512_dpbusd_epi32(s1, wv[j + 1], _mm512_set1_epi32(x1));
      }
      const __m512 dwx = _mm512_mul_ps(dw, _mm512_set1_ps(blocks[t * nb + b].d));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), dwx, acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}

// T = 1, two groups per pass: the groups are two DRAM streams (35 KB apart at H = 2048) where one
// group per pass is one stream per core; the activation broadcasts are shared. Per group the same
// operations in the same order as q8_group_block<1>, so the same bits.
inline void q8_group_pair_t1(const uint8_t* ga, const uint8_t* gb, int64_t nb, const int8_t* s8,
                             const int32_t* corr1, const QuantBlockQ8* blocks, float* ya, float* yb,
                             int pf, PrefetchHint hint) {
  const uint8_t* qa = ga + nb * 2 * kQ8GroupRows;
  const uint8_t* qb = gb + nb * 2 * kQ8GroupRows;
  __m512 acc_a = _mm512_setzero_ps(), acc_b = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* pa = qa + b * kQ8GroupBlockBytes;
    const uint8_t* pb = qb + b * kQ8GroupBlockBytes;
    if (pf > 0)
      for (int o = 0; o < kQ8GroupBlockBytes; o += 64) {
        prefetch_line(pa + pf + o, hint);
        prefetch_line(pb + pf + o, hint);
      }
    const int8_t* x = s8 + b * kQ8BlockSize;
    __m512i sa0 = _mm512_set1_epi32(corr1[b]), sa1 = _mm512_setzero_si512();
    __m512i sb0 = sa0, sb1 = sa1;
    for (int j = 0; j < 8; j += 2) {
      int32_t x0, x1;
      std::memcpy(&x0, x + 4 * j, 4);
      std::memcpy(&x1, x + 4 * j + 4, 4);
      const __m512i b0 = _mm512_set1_epi32(x0), b1 = _mm512_set1_epi32(x1);
      sa0 = _mm512_dpbusd_epi32(sa0, _mm512_loadu_si512(pa + 64 * j), b0);
      sa1 = _mm512_dpbusd_epi32(sa1, _mm512_loadu_si512(pa + 64 * j + 64), b1);
      sb0 = _mm512_dpbusd_epi32(sb0, _mm512_loadu_si512(pb + 64 * j), b0);
      sb1 = _mm512_dpbusd_epi32(sb1, _mm512_loadu_si512(pb + 64 * j + 64), b1);
    }
    const __m512 dx = _mm512_set1_ps(blocks[b].d);
    const auto scales = [&](const uint8_t* g) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + b * 32)));
    };
    acc_a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(sa0, sa1)),
                            _mm512_mul_ps(scales(ga), dx), acc_a);
    acc_b = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(sb0, sb1)),
                            _mm512_mul_ps(scales(gb), dx), acc_b);
  }
  _mm512_storeu_ps(ya, acc_a);
  _mm512_storeu_ps(yb, acc_b);
}

// HYBRID_MOE_Q8_GROUP_PASS=1|2: groups per pass of the AVX512 group code at T = 1 (A/B runs).
int q8_groups_per_pass() {
  static const int v = env_choice("HYBRID_MOE_Q8_GROUP_PASS", {"1", "2"}) == 1 ? 2 : 1;
  return v;
}

void avx_dot_groups_q8(const uint8_t* w, int64_t groups, int64_t n_in, const uint8_t* packed,
                       int n_tok, float* y, int64_t ldy) {
  const int64_t nb = n_in / kQ8BlockSize;
  const Q8Parts parts = q8_parts(n_tok, n_in);
  const auto* s8 = reinterpret_cast<const int8_t*>(packed + parts.s8);
  const auto* corr1 = reinterpret_cast<const int32_t*>(packed + parts.corr1);
  const auto* blocks = reinterpret_cast<const QuantBlockQ8*>(packed);
  const std::size_t group_bytes = kQ8GroupRows * row_bytes(WeightFormat::kQ8_0, n_in);
  const int pf = q8_group_prefetch_bytes();
  const PrefetchHint hint = prefetch_hint(WeightFormat::kQ8_0);
  int64_t g = 0;
  if (n_tok == 1 && q8_groups_per_pass() == 2)
    for (; g + 2 <= groups; g += 2) {
      const uint8_t* ga = w + g * group_bytes;
      if (pf > 0)  // both groups' scales
        for (int64_t o = 0; o < nb * 2 * kQ8GroupRows; o += 64) {
          prefetch_line(ga + o, hint);
          prefetch_line(ga + group_bytes + o, hint);
        }
      q8_group_pair_t1(ga, ga + group_bytes, nb, s8, corr1, blocks, y + g * kQ8GroupRows,
                       y + (g + 1) * kQ8GroupRows, pf, hint);
    }
  for (; g < groups; ++g) {
    const uint8_t* grp = w + g * group_bytes;
    float* yg = y + g * kQ8GroupRows;
    if (pf > 0)  // the group's scales (nb x 32 bytes, read 32 per block) at once
      for (int64_t o = 0; o < nb * 2 * kQ8GroupRows; o += 64) prefetch_line(grp + o, hint);
    int t = 0;
    for (; t + 4 <= n_tok; t += 4)  // later chunks find the group in L1/L2: no prefetch
      q8_group_block<4>(grp, nb, s8 + t * n_in, n_in, corr1 + t * nb, blocks + t * nb, yg + t * ldy,
                        ldy, t == 0 ? pf : 0, hint);
    const int8_t* st = s8 + t * n_in;
    const int32_t* ct = corr1 + t * nb;
    const QuantBlockQ8* bt = blocks + t * nb;
    float* yt = yg + t * ldy;
    const int pft = t == 0 ? pf : 0;
    switch (n_tok - t) {
      case 3:
        q8_group_block<3>(grp, nb, st, n_in, ct, bt, yt, ldy, pft, hint);
        break;
      case 2:
        q8_group_block<2>(grp, nb, st, n_in, ct, bt, yt, ldy, pft, hint);
        break;
      case 1:
        q8_group_block<1>(grp, nb, st, n_in, ct, bt, yt, ldy, pft, hint);
        break;
      default:
        break;
    }
  }
}

void avx_dot_rows(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                  int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy) {
  if (f == WeightFormat::kBF16) {
    const auto* act = reinterpret_cast<const uint16_t*>(packed);
    const int64_t as = round32(n_in);
    for_each_pass(w, row_stride, rows, y, [&](auto r, const PassRows& pr, float* yp) {
      bf16_rows<decltype(r)::value>(pr, n_in, act, as, n_tok, yp, ldy);
    });
    return;
  }
  const int64_t nb = n_in / kQ8BlockSize;
  const Q8Parts parts = q8_parts(n_tok, n_in);
  if (q8_kernel() == Q8Kernel::kQuad) {
    const auto* s8 = reinterpret_cast<const int8_t*>(packed + parts.s8);
    const auto* corr = reinterpret_cast<const int32_t*>(packed + parts.corr);
    const auto* dx4 = reinterpret_cast<const float*>(packed + parts.dx4);
    const auto* blocks = reinterpret_cast<const QuantBlockQ8*>(packed);
    for_each_pass(w, row_stride, rows, y, [&](auto r, const PassRows& pr, float* yp) {
      q8_quad_rows<decltype(r)::value>(pr, nb, s8, corr, dx4, blocks, n_tok, yp, ldy);
    });
    return;
  }
  const uint8_t* u8 = packed + parts.u8;
  const auto* sc = reinterpret_cast<const float*>(packed + parts.scales);
  for_each_pass(w, row_stride, rows, y, [&](auto r, const PassRows& pr, float* yp) {
    q8_rows<decltype(r)::value>(pr, nb, u8, sc, n_tok, yp, ldy);
  });
}

}  // namespace

const int32_t* q8_corrections(const uint8_t* packed, int n_tok, int64_t n) {
  return reinterpret_cast<const int32_t*>(packed + q8_parts(n_tok, n).corr1);
}

Q8Kernel q8_kernel() {
  // pair stays the default until quad is measured on the Xeon: on the dev machine quad's per-
  // thread gain from L2 (1.19x) did not reach the layer (T=1 1.624 vs 1.607 ms, T=4 4.979 vs
  // 4.788 ms; bench/RESULTS.md "CPU kernels, session 4").
  static const Q8Kernel k =
      env_choice("HYBRID_MOE_Q8_KERNEL", {"pair", "quad"}) == 1 ? Q8Kernel::kQuad : Q8Kernel::kPair;
  return k;
}

const KernelOps& avx512_ops() {
  static const KernelOps ops{Isa::kAvx512, avx_packed_bytes, avx_pack, avx_dot_rows,
                             avx_dot_groups_q8};
  return ops;
}

}  // namespace hm::cpu
