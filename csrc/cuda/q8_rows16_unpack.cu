// One thread per GGUF block (row, block b) of the expert's three matrices: its scale (one 16-bit
// read) and its 32 values (8 aligned 32-bit reads of the group layout, core/q8_rows16.h; the 16
// rows of a group sit in adjacent threads, so a warp's reads of one value quad are two 64-byte
// runs), written as 17 16-bit stores (GGUF blocks are 34 bytes: 2-byte aligned). 147k threads for
// a Qwen3-30B-A3B expert; the mover launches it on its copy stream after each copy.
#include <cuda_runtime.h>

#include <cstring>

#include "core/check.h"
#include "core/q8_rows16.h"
#include "cuda/cuda_check.h"
#include "cuda/q8_rows16_unpack.h"

namespace hm::cuda {
namespace {

struct MatrixSpan {
  std::size_t off;  // byte offset in the expert
  int64_t rows, nb;  // rows, blocks per row (n_in / 32)
};

__global__ void unpack_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst,
                              MatrixSpan g, MatrixSpan u, MatrixSpan d) {
  const int64_t n_g = g.rows * g.nb, n_u = u.rows * u.nb, n_d = d.rows * d.nb;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  MatrixSpan m = g;
  if (i >= n_g) {
    i -= n_g;
    m = u;
    if (i >= n_u) {
      i -= n_u;
      m = d;
      if (i >= n_d) return;
    }
  }
  const int64_t row = i / m.nb, b = i % m.nb;
  const int r = static_cast<int>(row % kQ8GroupRows);
  const std::size_t rb = static_cast<std::size_t>(m.nb) * kQ8BlockBytes;
  const uint8_t* grp = src + m.off + (row / kQ8GroupRows) * kQ8GroupRows * rb;
  auto* out = reinterpret_cast<uint16_t*>(dst + m.off + row * rb + b * kQ8BlockBytes);
  out[0] = *reinterpret_cast<const uint16_t*>(grp + b * 2 * kQ8GroupRows + 2 * r);
  const uint8_t* q = grp + m.nb * 2 * kQ8GroupRows + b * kQ8GroupBlockBytes + r * 4;
#pragma unroll
  for (int j = 0; j < kQ8BlockSize / 4; ++j) {
    const uint32_t v = *reinterpret_cast<const uint32_t*>(q + j * 64) ^ 0x80808080u;
    out[1 + 2 * j] = static_cast<uint16_t>(v & 0xffff);
    out[2 + 2 * j] = static_cast<uint16_t>(v >> 16);
  }
}

}  // namespace

void q8_rows16_to_gguf_async(const uint8_t* src, uint8_t* dst, const ExpertLayout& L,
                             void* stream) {
  HM_CHECK(L.format == WeightFormat::kQ8_0 && L.packing == RowPacking::kQ8Rows16,
           "q8_rows16_to_gguf_async needs a q8_0 layout packed q8_rows16");
  HM_CHECK(src != nullptr && dst != nullptr && (src + L.stride <= dst || dst + L.stride <= src),
           "q8_rows16_to_gguf_async: null or overlapping buffers");
  const int64_t nbh = L.hidden / kQ8BlockSize, nbi = L.intermediate / kQ8BlockSize;
  const MatrixSpan g{L.gate_offset, L.intermediate, nbh}, u{L.up_offset, L.intermediate, nbh},
      d{L.down_offset, L.hidden, nbi};
  const int64_t n = 2 * L.intermediate * nbh + L.hidden * nbi;
  constexpr int kThreads = 256;
  unpack_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                  static_cast<cudaStream_t>(stream)>>>(src, dst, g, u, d);
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace hm::cuda
