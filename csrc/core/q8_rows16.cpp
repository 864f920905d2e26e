#include "core/q8_rows16.h"

#include <cstring>

#include "core/check.h"

namespace hm {
namespace {

void check_shape(int64_t n_out, int64_t n_in) {
  HM_CHECK(n_out > 0 && n_out % kQ8GroupRows == 0, "q8_rows16 needs a multiple of 16 rows, got ",
           n_out);
  HM_CHECK(n_in > 0 && n_in % kQ8BlockSize == 0,
           "q8_rows16 needs rows of a multiple of 32 values, got ", n_in);
}

// One group of 16 rows: GGUF rows (stride rb) -> group if kToGroup, else group -> GGUF rows.
// 4-byte moves (a value quad is contiguous in both layouts), the sign flip as one 32-bit xor.
template <bool kToGroup>
void convert_group(const uint8_t* in, uint8_t* out, int64_t nb, std::size_t rb) {
  for (int r = 0; r < kQ8GroupRows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const std::size_t blk = r * rb + b * kQ8BlockBytes, sc = q8r16_scale_offset(b, r),
                        q = q8r16_value_offset(nb, b * kQ8BlockSize, r);
      std::memcpy(out + (kToGroup ? sc : blk), in + (kToGroup ? blk : sc), 2);
      for (int j = 0; j < kQ8BlockSize / 4; ++j) {
        const std::size_t row_quad = blk + 2 + 4 * j, grp_quad = q + 64 * j;
        uint32_t v;
        std::memcpy(&v, in + (kToGroup ? row_quad : grp_quad), 4);
        v ^= 0x80808080u;
        std::memcpy(out + (kToGroup ? grp_quad : row_quad), &v, 4);
      }
    }
}

template <bool kToGroup>
void convert_matrix(const uint8_t* src, uint8_t* dst, int64_t n_out, int64_t n_in) {
  check_shape(n_out, n_in);
  const std::size_t rb = row_bytes(WeightFormat::kQ8_0, n_in);
  for (int64_t g = 0; g < n_out / kQ8GroupRows; ++g) {
    const std::size_t off = g * kQ8GroupRows * rb;
    convert_group<kToGroup>(src + off, dst + off, n_in / kQ8BlockSize, rb);
  }
}

}  // namespace

void q8_rows16_from_gguf(const uint8_t* src, uint8_t* dst, int64_t n_out, int64_t n_in) {
  convert_matrix<true>(src, dst, n_out, n_in);
}

void q8_rows16_to_gguf(const uint8_t* src, uint8_t* dst, int64_t n_out, int64_t n_in) {
  convert_matrix<false>(src, dst, n_out, n_in);
}

void repack_expert(const ExpertLayout& L, RowPacking to, const uint8_t* src, uint8_t* dst) {
  HM_CHECK(src != nullptr && dst != nullptr, "repack_expert: null buffer");
  HM_CHECK(src + L.stride <= dst || dst + L.stride <= src, "repack_expert: buffers overlap");
  if (L.packing == to) {
    std::memcpy(dst, src, L.stride);
    return;
  }
  std::memset(dst, 0, L.stride);
  HM_CHECK(L.format == WeightFormat::kQ8_0, "row packing q8_rows16 needs the q8_0 format, got ",
           format_name(L.format));
  const auto conv = to == RowPacking::kQ8Rows16 ? q8_rows16_from_gguf : q8_rows16_to_gguf;
  conv(src + L.gate_offset, dst + L.gate_offset, L.intermediate, L.hidden);
  conv(src + L.up_offset, dst + L.up_offset, L.intermediate, L.hidden);
  conv(src + L.down_offset, dst + L.down_offset, L.hidden, L.intermediate);
}

void store_expert_from_gguf(const ExpertLayout& L, const uint8_t* gguf, uint8_t* dst) {
  if (L.packing == RowPacking::kGguf) {
    std::memcpy(dst, gguf, L.stride);
    return;
  }
  ExpertLayout from = L;
  from.packing = RowPacking::kGguf;
  repack_expert(from, L.packing, gguf, dst);
}

}  // namespace hm
