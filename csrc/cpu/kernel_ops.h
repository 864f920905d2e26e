// [NOTE] The per-ISA building blocks of the CPU expert kernel (moe_cpu.cpp drives them).
//
// A "group" is the n_tok tokens that share one expert. Their activations (n values each, fp32 in)
// are packed once into a variant-specific buffer, then every weight row is dotted with all n_tok
// packed activations. Packed encodings (all padded so that a block never straddles tokens):
//   generic bf16: fp32 values, token-major [n_tok][n]                      (exact)
//   avx2    bf16: fp32 values, token-major [n_tok][n + 16], each full 16-chunk permuted for the
//                 unpacklo/hi widening of the weights (kernels_avx2.cpp)         (exact)
//   avx512  bf16: bf16 values, token-major [n_tok][n rounded up to 32], zero padding (vdpbf16ps)
//   amx     bf16: the avx512 buffer, then (n % 32 == 0 and n_tok >= kAmxMinTokens) a copy in AMX
//                 VNNI order [n/2][n_tok rounded up to 16][2] for TDPBF16PS
//   all     q8_0: per token n/32 blocks of {float d; int8 q[32]} (QuantBlockQ8, 36 bytes),
//                 the value is d*q, q = round(x/d) in [-127, 127], d = max|x|/127 (llama.cpp's
//                 activation quantisation); amx adds [n/4][n_tok16][4] int8 + [n/32][n_tok16] d
//                 + [n_tok16][n] int8 (tile A of the q8_rows16 group code); avx512 adds s8
//                 copies and per-block corrections (kernels_avx512.cpp).
// pack() writes the part of the buffer for values [k0, k1); k0 and k1 are multiples of 32 (or k1 =
// n), so tasks that own disjoint value ranges can pack disjoint parts concurrently.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/weight_format.h"
#include "cpu/isa.h"

namespace hm::cpu {

struct QuantBlockQ8 {
  float d;
  int8_t q[kQ8BlockSize];
};
static_assert(sizeof(QuantBlockQ8) == 36, "activation Q8 block is 36 bytes");

// Software prefetch distance of the SIMD variants, bytes ahead in each weight-row stream:
// HYBRID_MOE_PREFETCH if set (0 turns software prefetch off), else kDefaultPrefetchBytes. Read
// once; a malformed value raises hm::ValueError on first use.
inline constexpr int kDefaultPrefetchBytes = 2048;  // best of 0, 1024, 2048 on the lent Xeon
int prefetch_bytes();
// The AVX512 Q8_0 group code's distance: HYBRID_MOE_PREFETCH if set, else 4096 (lent Xeon, 16
// threads, 16 order-balanced layer runs against 2048: median 0.341 / 0.358 ms at T = 1, 1.129 /
// 1.217 at T = 4; bench/RESULTS.md session 12). A group's block step reads 512 bytes of one
// stream, so 2048 B was only 4 steps ahead.
inline constexpr int kDefaultQ8GroupPrefetchBytes = 4096;
int q8_group_prefetch_bytes();
// Cache level the SIMD variants' software prefetches target for weights of format f:
// HYBRID_MOE_PREFETCH_HINT = l1 (prefetcht0), l2 (prefetcht1) or nta (prefetchnta) for every
// format; unset: l1 for bf16, l2 for Q8_0 (lent Xeon, 16 threads, Q8_0 at 2048 B: l2 0.463 /
// 1.517 ms at T = 1 / 4 vs l1 0.497 / 1.775, and 1024 B l2 ahead of l1 in the previous session;
// bf16 already streams at the DRAM reader's rate with l1). Read once; a malformed value raises
// hm::ValueError on first use.
enum class PrefetchHint { kL1, kL2, kNonTemporal };
PrefetchHint prefetch_hint(WeightFormat f);
// Whether a software-prefetch step longer than a cache line (Q8_0: 68-byte block pairs, 136-byte
// quads) prefetches every line it reaches: HYBRID_MOE_PREFETCH_LINES = every (default: ceil(step /
// 64) prefetches 64 bytes apart per step) or step (one prefetch per step, the earlier version: it
// skipped one line in 17). Read once; a malformed value raises hm::ValueError on first use.
bool prefetch_every_line();
// Order in which the SIMD variants walk a call's weight rows, 4 at a time (HYBRID_MOE_ROW_ORDER):
// interleaved: a pass takes 4 adjacent rows (rows 0-3, then 4-7, ...);
// streams: the rows are cut into 4 contiguous runs and a pass takes one row of each, so each of
//   the 4 concurrent load streams is one long sequential range (Q8_0 rows are 2176 or 816 bytes,
//   so with interleaved order 2-4 streams share a 4 KiB page).
// Defaults per variant: AVX512 interleaved (streams was equal at T=1 and 1-14% slower at T=4 on
// the lent Xeon, 2026-11-28; its prefetcher already follows each stream into its next row);
// AVX2 streams (its prefetch stays within a row: 1.17x at T=1, 1.36x at T=4 bf16 on the Zen 3
// development VM, 2026-11-29).
enum class RowOrder { kInterleaved, kStreams };
RowOrder row_order(RowOrder when_unset = RowOrder::kInterleaved);

// Tile code of the AMX variant (HYBRID_MOE_AMX_KERNEL):
//   auto (default): simple for bf16, pipelined for Q8_0 (the faster of the two per format in the
//     lent Xeon's A/B, 2026-11-28: bf16 T=512 20.2-22.0 ms simple vs 23.5-26.2 pipelined; Q8_0
//     29.3-30.1 pipelined vs 29.9-32.6 simple);
//   pipelined: two sets of tile registers used in turn (a step's tile loads do not wait for the
//     previous step's multiply; Q8_0: block b+1's multiply runs while block b is scaled), and the
//     next 16-row tile prefetched into L2 while the current one computes;
//   simple: one set, no prefetch (the first version).
// Read once; a malformed value raises hm::ValueError on first use.
enum class AmxKernel { kAuto, kPipelined, kSimple };
AmxKernel amx_kernel();

// Q8_0 code of the AVX512 variant (HYBRID_MOE_Q8_KERNEL; kernels_avx512.cpp):
//   quad (opt-in until measured on the Xeon): 4 blocks per step, weights made unsigned (q ^ 0x80)
//   against signed
//     activations with the correction precomputed per token, the two dot products of a step folded
//     to 4 lanes per block so that convert, scale and fma run once per 4 blocks;
//   pair (default): 2 blocks per step, activations stored as q + 128 and the correction computed
//     per weight register (measured on the Xeon, bench/RESULTS.md).
// Read once; a malformed value raises hm::ValueError on first use.
enum class Q8Kernel { kQuad, kPair };
Q8Kernel q8_kernel();

// Group size from which the AMX variant uses tiles (below it, its AVX512 code).
inline constexpr int kAmxMinTokens = 8;

struct KernelOps {
  Isa isa;
  // Bytes of the packed buffer for n_tok tokens of n values.
  std::size_t (*packed_bytes)(WeightFormat f, int n_tok, int64_t n);
  // src[t][j] is value k0 + j of token t (j < k1 - k0). Writes the buffer's part for [k0, k1).
  void (*pack)(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1,
               const float* const* src, uint8_t* packed);
  // y[t * ldy + r] = <row r of w, activation t> for r < rows, t < n_tok. Rows are n_in values in
  // format f, row r at w + r * row_stride (the GGUF layout: row_stride = row_bytes(f, n_in)).
  void (*dot_rows)(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                   int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy);
  // Q8_0 rows packed in groups of 16 (RowPacking::kQ8Rows16, core/q8_rows16.h): y[t * ldy + r]
  // for r < 16 * groups, the groups consecutive from w; packed as from pack(kQ8_0, ...).
  void (*dot_groups_q8)(const uint8_t* w, int64_t groups, int64_t n_in, const uint8_t* packed,
                        int n_tok, float* y, int64_t ldy);
};

// The portable dot_groups_q8 (reads the QuantBlockQ8 part that every variant's pack writes first).
void generic_dot_groups_q8(const uint8_t* w, int64_t groups, int64_t n_in, const uint8_t* packed,
                           int n_tok, float* y, int64_t ldy);

// Packing shared by the generic and AVX2 variants: bytes of fp32 [n_tok][n] (bf16 weights) or
// QuantBlockQ8 [n_tok][n / 32] (Q8_0), and the Q8_0 pack of values [k0, k1) of n_tok tokens.
std::size_t fp32_q8_packed_bytes(WeightFormat f, int n_tok, int64_t n);
void pack_q8_blocks(int n_tok, int64_t n, int64_t k0, int64_t k1, const float* const* src,
                    uint8_t* packed);

// The AVX512 (and AMX) Q8 packed buffer's per-block corrections: int32 [n_tok][n / 32] =
// -128 x (sum of the block's int8 activations) (kernels_avx512.cpp).
#if HYBRID_MOE_HAVE_AVX512
const int32_t* q8_corrections(const uint8_t* packed, int n_tok, int64_t n);
#endif

const KernelOps& generic_ops();
#if HYBRID_MOE_HAVE_AVX2
const KernelOps& avx2_ops();
#endif
#if HYBRID_MOE_HAVE_AVX512
const KernelOps& avx512_ops();
#endif
#if HYBRID_MOE_HAVE_AMX
const KernelOps& amx_ops();
#endif
// The ops of variant `isa` (which the machine must be able to run).
const KernelOps& kernel_ops(Isa isa);

}  // namespace hm::cpu
