// One thread block per (matrix, 16-row group, chunk of 8 blocks): the chunk's group bytes (16 x 8
// scales, then 8 x 512 value bytes: one contiguous 4352-byte range of core/q8_rows16.h's layout)
// are read into shared memory with coalesced 32-bit loads, then written as the 16 rows' GGUF
// runs (8 blocks x 34 bytes = 272 contiguous bytes per row) with coalesced 16-bit stores (GGUF
// blocks are 2-byte aligned; a 16-bit word is the scale or two values of one quad). Reading or
// writing straight from global memory makes one side strided: 32 us per Qwen3-30B-A3B expert on
// the H200 against a 95 us copy (session 8).
#include <cuda_runtime.h>

#include "core/check.h"
#include "core/q8_rows16.h"
#include "cuda/cuda_check.h"
#include "cuda/q8_rows16_unpack.h"

namespace hm::cuda {
namespace {

constexpr int kChunkBlocks = 8;
constexpr int kThreads = 256;
constexpr int kChunkScaleBytes = kChunkBlocks * 2 * kQ8GroupRows;                  // 256
constexpr int kChunkBytes = kChunkScaleBytes + kChunkBlocks * kQ8GroupBlockBytes;  // 4352

struct MatrixSpan {
  std::size_t off;  // byte offset in the expert
  int groups, nb;   // 16-row groups, blocks per row (n_in / 32)
  int chunks;       // ceil(nb / kChunkBlocks)
};

__global__ void unpack_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst,
                              MatrixSpan g, MatrixSpan u, MatrixSpan d) {
  __shared__ __align__(16) uint8_t sm[kChunkBytes];
  int job = blockIdx.x;
  MatrixSpan m = g;
  if (job >= g.groups * g.chunks) {
    job -= g.groups * g.chunks;
    m = u;
    if (job >= u.groups * u.chunks) {
      job -= u.groups * u.chunks;
      m = d;
    }
  }
  const int grp = job / m.chunks, b0 = (job % m.chunks) * kChunkBlocks;
  const int nblk = min(kChunkBlocks, m.nb - b0);
  const std::size_t rb = static_cast<std::size_t>(m.nb) * kQ8BlockBytes;
  const uint8_t* gsrc = src + m.off + static_cast<std::size_t>(grp) * kQ8GroupRows * rb;
  // scales of blocks b0.. (32 bytes each) -> sm[0, 256); values (512 each) -> sm[256, ...)
  const uint32_t* s_sc = reinterpret_cast<const uint32_t*>(gsrc + b0 * 2 * kQ8GroupRows);
  const uint32_t* s_q =
      reinterpret_cast<const uint32_t*>(gsrc + m.nb * 2 * kQ8GroupRows + b0 * kQ8GroupBlockBytes);
  uint32_t* sm32 = reinterpret_cast<uint32_t*>(sm);
  for (int i = threadIdx.x; i < nblk * 8; i += kThreads) sm32[i] = s_sc[i];
  for (int i = threadIdx.x; i < nblk * 128; i += kThreads) sm32[kChunkScaleBytes / 4 + i] = s_q[i];
  __syncthreads();
  const int run_words = nblk * kQ8BlockBytes / 2;  // 16-bit words of one row's run
  for (int i = threadIdx.x; i < kQ8GroupRows * run_words; i += kThreads) {
    const int r = i / run_words, w = i % run_words;
    const int bb = (2 * w) / kQ8BlockBytes, c = (2 * w) % kQ8BlockBytes;
    uint16_t v;
    if (c == 0) {
      v = *reinterpret_cast<const uint16_t*>(sm + bb * 2 * kQ8GroupRows + 2 * r);
    } else {
      const int k = c - 2;  // even: values k, k + 1 of one quad
      v = *reinterpret_cast<const uint16_t*>(sm + kChunkScaleBytes + bb * kQ8GroupBlockBytes +
                                             (k / 4) * 64 + r * 4 + k % 4) ^
          0x8080u;
    }
    uint8_t* row = dst + m.off + (static_cast<std::size_t>(grp) * kQ8GroupRows + r) * rb;
    reinterpret_cast<uint16_t*>(row + b0 * kQ8BlockBytes)[w] = v;
  }
}

MatrixSpan span(std::size_t off, int64_t rows, int64_t n_in) {
  const int nb = static_cast<int>(n_in / kQ8BlockSize);
  return {off, static_cast<int>(rows / kQ8GroupRows), nb, (nb + kChunkBlocks - 1) / kChunkBlocks};
}

}  // namespace

void q8_rows16_to_gguf_async(const uint8_t* src, uint8_t* dst, const ExpertLayout& L,
                             void* stream) {
  HM_CHECK(L.format == WeightFormat::kQ8_0 && L.packing == RowPacking::kQ8Rows16,
           "q8_rows16_to_gguf_async needs a q8_0 layout packed q8_rows16");
  HM_CHECK(src != nullptr && dst != nullptr && (src + L.stride <= dst || dst + L.stride <= src),
           "q8_rows16_to_gguf_async: null or overlapping buffers");
  const MatrixSpan g = span(L.gate_offset, L.intermediate, L.hidden),
                   u = span(L.up_offset, L.intermediate, L.hidden),
                   d = span(L.down_offset, L.hidden, L.intermediate);
  const int jobs = g.groups * g.chunks + u.groups * u.chunks + d.groups * d.chunks;
  unpack_kernel<<<jobs, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(src, dst, g, u, d);
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace hm::cuda
