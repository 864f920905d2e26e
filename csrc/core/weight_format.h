// [NOTE] Expert weight formats and the byte layout of one expert (DESIGN.md section 6).
//
// One expert is ONE contiguous byte range, so one copy moves it between host store and VRAM slot:
//   [gate: I rows x H] [up: I rows x H] [down: H rows x I], each matrix starting on a kAlign
//   boundary.
// Rows are stored in the format's encoding along the input dimension (n_in), matching GGUF's
// `[n_expert, n_out, n_in]` expert tensors:
//   kBF16: n_in bfloat16 values (2 bytes each).
//   kQ8_0: n_in / 32 blocks of {fp16 scale d; int8 q[32]} = 34 bytes; value = d * q. n_in % 32 ==
//   0.
// Host-side row packing (RowPacking; the GPU's slots always hold the GGUF rows above):
//   kGguf:      the rows as above.
//   kQ8Rows16:  Q8_0 only. Rows in groups of 16 (n_out % 16 == 0, always true for Q8_0 experts,
//               whose H and I are multiples of 32); group g (rows 16g..16g+15, the same bytes as
//               those 16 GGUF rows) holds [nb][16] fp16 scales (block-major), then per block b
//               [8 groups of 4 values][16 rows][4] bytes q ^ 0x80 (unsigned). One block of 16
//               rows is then one 512-byte run that a VNNI dot product (u8 weights x 4 broadcast
//               s8 activations) or an AMX int8 B tile reads as it is (core/q8_rows16.h).
// Every component (CPU kernels, GPU kernels, host store, cost model) uses these functions, so the
// layout is defined once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/check.h"

namespace hm {

enum class WeightFormat : int { kBF16 = 0, kQ8_0 = 1 };
enum class RowPacking : int { kGguf = 0, kQ8Rows16 = 1 };

inline constexpr int kQ8BlockSize = 32;     // values per Q8_0 block
inline constexpr int kQ8BlockBytes = 34;    // fp16 scale + 32 int8
inline constexpr std::size_t kAlign = 256;  // start of each matrix in an expert, and expert stride

struct BlockQ8_0 {
  uint16_t d;  // IEEE fp16 bits of the scale
  int8_t qs[kQ8BlockSize];
};
static_assert(sizeof(BlockQ8_0) == kQ8BlockBytes, "Q8_0 block must be 34 bytes (GGUF layout)");

inline const char* format_name(WeightFormat f) {
  return f == WeightFormat::kBF16 ? "bf16" : "q8_0";
}

inline WeightFormat parse_format(const std::string& name) {
  if (name == "bf16") return WeightFormat::kBF16;
  if (name == "q8_0") return WeightFormat::kQ8_0;
  HM_CHECK(false, "unknown weight format '", name, "': expected bf16 or q8_0");
}

inline const char* packing_name(RowPacking p) {
  return p == RowPacking::kGguf ? "gguf" : "q8_rows16";
}

inline RowPacking parse_packing(const std::string& name) {
  if (name == "gguf") return RowPacking::kGguf;
  if (name == "q8_rows16") return RowPacking::kQ8Rows16;
  HM_CHECK(false, "unknown row packing '", name, "': expected gguf or q8_rows16");
}

inline std::size_t align_up(std::size_t n, std::size_t a = kAlign) {
  return (n + a - 1) / a * a;
}

// Bytes of one row of n_in inputs in format f.
inline std::size_t row_bytes(WeightFormat f, int64_t n_in) {
  HM_CHECK(n_in > 0, "row length must be positive, got ", n_in);
  if (f == WeightFormat::kBF16) return static_cast<std::size_t>(n_in) * 2;
  HM_CHECK(n_in % kQ8BlockSize == 0, "q8_0 needs rows that are a multiple of 32 values, got ",
           n_in);
  return static_cast<std::size_t>(n_in / kQ8BlockSize) * kQ8BlockBytes;
}

// Byte layout of one expert with hidden size H and intermediate size I.
struct ExpertLayout {
  WeightFormat format = WeightFormat::kBF16;
  RowPacking packing = RowPacking::kGguf;  // host-side rows (see [NOTE]); sizes do not depend on it
  int64_t hidden = 0;                      // H
  int64_t intermediate = 0;                // I
  std::size_t gate_offset = 0, up_offset = 0, down_offset = 0;
  std::size_t gate_bytes = 0, up_bytes = 0, down_bytes = 0;
  std::size_t stride = 0;  // bytes from one expert to the next in a store or slab

  // Bytes of real weights (what a kernel must read), without padding.
  std::size_t weight_bytes() const { return gate_bytes + up_bytes + down_bytes; }
};

inline ExpertLayout make_expert_layout(WeightFormat f, int64_t hidden, int64_t intermediate,
                                       RowPacking packing = RowPacking::kGguf) {
  HM_CHECK(hidden > 0 && intermediate > 0, "expert shape must be positive, got hidden=", hidden,
           " intermediate=", intermediate);
  HM_CHECK(packing == RowPacking::kGguf || f == WeightFormat::kQ8_0,
           "row packing q8_rows16 needs the q8_0 format, got ", format_name(f));
  ExpertLayout l;
  l.format = f;
  l.packing = packing;
  l.hidden = hidden;
  l.intermediate = intermediate;
  l.gate_bytes = static_cast<std::size_t>(intermediate) * row_bytes(f, hidden);
  l.up_bytes = l.gate_bytes;
  l.down_bytes = static_cast<std::size_t>(hidden) * row_bytes(f, intermediate);
  l.gate_offset = 0;
  l.up_offset = align_up(l.gate_bytes);
  l.down_offset = l.up_offset + align_up(l.up_bytes);
  l.stride = align_up(l.down_offset + l.down_bytes);
  return l;
}

}  // namespace hm
