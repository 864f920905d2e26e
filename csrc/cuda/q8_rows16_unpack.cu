// One thread per output byte: GGUF byte (row, block b, byte c) of a matrix comes from the group
// layout of core/q8_rows16.h (c < 2: the scale, else value c - 2, stored ^ 0x80). Reads of a warp
// fall in a few 64-byte runs; a 5 MB expert converts in a few microseconds on an H200.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/check.h"
#include "core/q8_rows16.h"
#include "cuda/cuda_check.h"
#include "cuda/q8_rows16_unpack.h"

namespace hm::cuda {
namespace {

struct MatrixSpan {
  std::size_t off, bytes;
  int64_t nb;  // blocks per row (n_in / 32)
};

__device__ __forceinline__ uint8_t gguf_byte(const uint8_t* grp_base, const MatrixSpan& m,
                                             std::size_t o) {
  const std::size_t rb = static_cast<std::size_t>(m.nb) * kQ8BlockBytes;
  const std::size_t row = o / rb, in_row = o % rb;
  const int64_t b = static_cast<int64_t>(in_row / kQ8BlockBytes);
  const int c = static_cast<int>(in_row % kQ8BlockBytes);
  const int r = static_cast<int>(row % kQ8GroupRows);
  const uint8_t* grp = grp_base + (row / kQ8GroupRows) * kQ8GroupRows * rb;
  if (c < 2) return grp[b * 2 * kQ8GroupRows + 2 * r + c];
  const int k = c - 2;
  return grp[m.nb * 2 * kQ8GroupRows + b * kQ8GroupBlockBytes + (k / 4) * 64 + r * 4 + k % 4] ^
         0x80;
}

__global__ void unpack_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst,
                              std::size_t stride, MatrixSpan g, MatrixSpan u, MatrixSpan d) {
  for (std::size_t o = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; o < stride;
       o += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const MatrixSpan* m = o >= d.off ? &d : o >= u.off ? &u : &g;
    // padding after a matrix: copied as it is
    dst[o] = o >= m->off && o < m->off + m->bytes ? gguf_byte(src + m->off, *m, o - m->off) : src[o];
  }
}

}  // namespace

void q8_rows16_to_gguf_async(const uint8_t* src, uint8_t* dst, const ExpertLayout& L,
                             void* stream) {
  HM_CHECK(L.format == WeightFormat::kQ8_0 && L.packing == RowPacking::kQ8Rows16,
           "q8_rows16_to_gguf_async needs a q8_0 layout packed q8_rows16");
  HM_CHECK(src != nullptr && dst != nullptr && (src + L.stride <= dst || dst + L.stride <= src),
           "q8_rows16_to_gguf_async: null or overlapping buffers");
  const MatrixSpan g{L.gate_offset, L.gate_bytes, L.hidden / kQ8BlockSize};
  const MatrixSpan u{L.up_offset, L.up_bytes, L.hidden / kQ8BlockSize};
  const MatrixSpan d{L.down_offset, L.down_bytes, L.intermediate / kQ8BlockSize};
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<std::size_t>((L.stride + kThreads - 1) / kThreads,
                                                            4096));
  unpack_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(src, dst, L.stride, g,
                                                                             u, d);
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace hm::cuda
