// Q8_0 rows packed in groups of 16 (RowPacking::kQ8Rows16, see the [NOTE] in weight_format.h):
// conversion from and to GGUF rows, for one matrix or one whole expert.
//
// Group g of a matrix [n_out][n_in] (nb = n_in / 32 blocks, 16 * nb * 34 bytes, at the offset of
// GGUF row 16g):
//   [0, 32 nb)            fp16 scale of (block b, row r) at 32 b + 2 r
//   [32 nb, 34 * 16 nb)   value 32 b + 4 j + i of row r at 32 nb + 512 b + 64 j + 4 r + i, stored
//                         as q ^ 0x80 (the int8 value + 128, as an unsigned byte)
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/weight_format.h"

namespace hm {

inline constexpr int kQ8GroupRows = 16;                                 // rows per group
inline constexpr int kQ8GroupBlockBytes = kQ8GroupRows * kQ8BlockSize;  // 512 quant bytes

// Byte offset, inside its group, of the scale of (block b, row r) and of value k of row r.
inline std::size_t q8r16_scale_offset(int64_t b, int r) {
  return static_cast<std::size_t>(b) * 2 * kQ8GroupRows + 2 * r;
}
inline std::size_t q8r16_value_offset(int64_t nb, int64_t k, int r) {
  const int64_t b = k / kQ8BlockSize, j = (k % kQ8BlockSize) / 4, i = k % 4;
  return static_cast<std::size_t>(nb * 2 * kQ8GroupRows + b * kQ8GroupBlockBytes + j * 64 + r * 4 +
                                  i);
}

// One matrix of n_out GGUF rows of n_in values -> groups (n_out % 16 == 0, n_in % 32 == 0).
// src and dst must not overlap.
void q8_rows16_from_gguf(const uint8_t* src, uint8_t* dst, int64_t n_out, int64_t n_in);
// The inverse.
void q8_rows16_to_gguf(const uint8_t* src, uint8_t* dst, int64_t n_out, int64_t n_in);

// One expert of layout L (its packing is what src holds) into dst in packing `to` (gate, up and
// down converted; padding copied as zeros). src and dst must not overlap; L.format must be q8_0
// unless both packings are gguf.
void repack_expert(const ExpertLayout& L, RowPacking to, const uint8_t* src, uint8_t* dst);

// dst (L.stride bytes, L's packing) <- one expert in GGUF rows (a memcpy when L packs GGUF).
void store_expert_from_gguf(const ExpertLayout& L, const uint8_t* gguf, uint8_t* dst);

}  // namespace hm
