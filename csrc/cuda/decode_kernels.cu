// [NOTE] Decode expert kernels (few tokens, memory-bound): see expert_kernels.h for the math.
// Phase 1 (gate/up): grid (ceil(I / 8), max_pairs), 8 warps per block, one warp per (pair, row):
//   the warp streams the gate and up rows of its slot with 16-byte loads (BF16), or stages them
//   in shared memory 64 Q8_0 blocks at a time and has each lane decode whole 34-byte blocks.
// Phase 2 (down): grid (ceil(H / 8), n_tokens), one warp per (token, output row), looping over
//   the token's pairs (CSR token_ptr), so each out element has exactly one writer.
// Both phases read the pair count from device memory and exit blocks beyond it (graph replay).
// With Qwen3-30B-A3B (H=2048, I=768), 8 pairs: 6144 warps in phase 1 and 2048 in phase 2 cover
// all 132 SMs of an H200; each lane has several 16-byte loads in flight.
#include <cuda_bf16.h>

#include "cuda/cuda_check.h"
#include "cuda/expert_kernels.h"
#include "cuda/kernel_common.cuh"

namespace hm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kQ8PieceBlocks = 64;  // Q8_0 blocks staged per warp and row at a time
constexpr int kQ8PieceBytes = kQ8PieceBlocks * kQ8BlockBytes;  // 2176, a multiple of 16

struct KernelSlab {
  const uint8_t* base;
  std::size_t stride, gate_off, up_off, down_off;
  int H, I;
};

KernelSlab kernel_slab(const SlabView& s) {
  return {s.base, s.layout.stride, s.layout.gate_offset, s.layout.up_offset, s.layout.down_offset,
          static_cast<int>(s.layout.hidden), static_cast<int>(s.layout.intermediate)};
}

__global__ void __launch_bounds__(kWarps * 32)
    gate_up_bf16_kernel(KernelSlab sl, DevicePlan plan, const __nv_bfloat16* __restrict__ x,
                        float* __restrict__ h) {
  const int pair = blockIdx.y;
  if (pair >= plan.token_ptr[plan.n_tokens]) return;
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= sl.I) return;
  const uint8_t* e = sl.base + static_cast<std::size_t>(plan.pair_slot[pair]) * sl.stride;
  const std::size_t row_bytes = static_cast<std::size_t>(sl.H) * 2;
  const uint4* g = reinterpret_cast<const uint4*>(e + sl.gate_off + row * row_bytes);
  const uint4* u = reinterpret_cast<const uint4*>(e + sl.up_off + row * row_bytes);
  const uint4* xv = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(plan.pair_token[pair]) * sl.H);
  const int n16 = sl.H / 8;
  float sg = 0.f, su = 0.f;
#pragma unroll 4
  for (int c = lane; c < n16; c += 32) {
    const uint4 wg = dev::ld_stream(g + c);
    const uint4 wu = dev::ld_stream(u + c);
    const uint4 xx = __ldg(xv + c);
    sg += dev::dot8_bf16(wg, xx);
    su += dev::dot8_bf16(wu, xx);
  }
  sg = dev::warp_sum(sg);
  su = dev::warp_sum(su);
  if (lane == 0) h[static_cast<int64_t>(pair) * sl.I + row] = dev::silu(sg) * su;
}

__global__ void __launch_bounds__(kWarps * 32)
    gate_up_q8_kernel(KernelSlab sl, DevicePlan plan, const __nv_bfloat16* __restrict__ x,
                      float* __restrict__ h) {
  __shared__ __align__(16) uint8_t stage[kWarps][2][kQ8PieceBytes];
  const int pair = blockIdx.y;
  if (pair >= plan.token_ptr[plan.n_tokens]) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= sl.I) return;
  const uint8_t* e = sl.base + static_cast<std::size_t>(plan.pair_slot[pair]) * sl.stride;
  const int nb = sl.H / kQ8BlockSize;
  const std::size_t row_bytes = static_cast<std::size_t>(nb) * kQ8BlockBytes;
  const uint8_t* g = e + sl.gate_off + row * row_bytes;
  const uint8_t* u = e + sl.up_off + row * row_bytes;
  const __nv_bfloat16* xr = x + static_cast<int64_t>(plan.pair_token[pair]) * sl.H;
  float sg = 0.f, su = 0.f;
  for (int b0 = 0; b0 < nb; b0 += kQ8PieceBlocks) {
    const int nblk = min(kQ8PieceBlocks, nb - b0);
    dev::warp_copy_to_shared(stage[warp][0], g + b0 * kQ8BlockBytes, nblk * kQ8BlockBytes, lane);
    dev::warp_copy_to_shared(stage[warp][1], u + b0 * kQ8BlockBytes, nblk * kQ8BlockBytes, lane);
    __syncwarp();
    for (int b = lane; b < nblk; b += 32) {
      const uint8_t* bg = stage[warp][0] + b * kQ8BlockBytes;
      const uint8_t* bu = stage[warp][1] + b * kQ8BlockBytes;
      const __nv_bfloat16* xb = xr + (b0 + b) * kQ8BlockSize;
      sg = fmaf(dev::q8_scale(bg), dev::q8_dot_bf16(bg, xb), sg);
      su = fmaf(dev::q8_scale(bu), dev::q8_dot_bf16(bu, xb), su);
    }
    __syncwarp();
  }
  sg = dev::warp_sum(sg);
  su = dev::warp_sum(su);
  if (lane == 0) h[static_cast<int64_t>(pair) * sl.I + row] = dev::silu(sg) * su;
}

template <typename OutT>
__global__ void __launch_bounds__(kWarps * 32)
    down_bf16_kernel(KernelSlab sl, DevicePlan plan, const float* __restrict__ h, OutT* out) {
  const int t = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= sl.H) return;
  const int beg = plan.token_ptr[t], end = plan.token_ptr[t + 1];
  const std::size_t row_bytes = static_cast<std::size_t>(sl.I) * 2;
  const int n16 = sl.I / 8;
  float acc = 0.f;
  for (int p = beg; p < end; ++p) {
    const uint8_t* e = sl.base + static_cast<std::size_t>(plan.pair_slot[p]) * sl.stride;
    const uint4* d = reinterpret_cast<const uint4*>(e + sl.down_off + row * row_bytes);
    const float4* hp = reinterpret_cast<const float4*>(h + static_cast<int64_t>(p) * sl.I);
    float s = 0.f;
#pragma unroll 4
    for (int c = lane; c < n16; c += 32) {
      const uint4 w = dev::ld_stream(d + c);
      s += dev::dot8_bf16_f32(w, hp[2 * c], hp[2 * c + 1]);
    }
    acc = fmaf(plan.pair_weight[p], s, acc);
  }
  acc = dev::warp_sum(acc);
  if (lane == 0) dev::add_out(out, static_cast<int64_t>(t) * sl.H + row, acc);
}

template <typename OutT>
__global__ void __launch_bounds__(kWarps * 32)
    down_q8_kernel(KernelSlab sl, DevicePlan plan, const float* __restrict__ h, OutT* out) {
  __shared__ __align__(16) uint8_t stage[kWarps][kQ8PieceBytes];
  const int t = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= sl.H) return;
  const int beg = plan.token_ptr[t], end = plan.token_ptr[t + 1];
  const int nb = sl.I / kQ8BlockSize;
  const std::size_t row_bytes = static_cast<std::size_t>(nb) * kQ8BlockBytes;
  float acc = 0.f;
  for (int p = beg; p < end; ++p) {
    const uint8_t* e = sl.base + static_cast<std::size_t>(plan.pair_slot[p]) * sl.stride;
    const uint8_t* d = e + sl.down_off + row * row_bytes;
    const float* hp = h + static_cast<int64_t>(p) * sl.I;
    float s = 0.f;
    for (int b0 = 0; b0 < nb; b0 += kQ8PieceBlocks) {
      const int nblk = min(kQ8PieceBlocks, nb - b0);
      dev::warp_copy_to_shared(stage[warp], d + b0 * kQ8BlockBytes, nblk * kQ8BlockBytes, lane);
      __syncwarp();
      for (int b = lane; b < nblk; b += 32) {
        const uint8_t* blk = stage[warp] + b * kQ8BlockBytes;
        s = fmaf(dev::q8_scale(blk), dev::q8_dot_f32(blk, hp + (b0 + b) * kQ8BlockSize), s);
      }
      __syncwarp();
    }
    acc = fmaf(plan.pair_weight[p], s, acc);
  }
  acc = dev::warp_sum(acc);
  if (lane == 0) dev::add_out(out, static_cast<int64_t>(t) * sl.H + row, acc);
}

template <typename OutT>
__global__ void add_partials_kernel(OutT* out, const float* __restrict__ partial, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dev::add_out(out, i, partial[i]);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void check_decode_args(const SlabView& slab, const DevicePlan& plan, const void* x,
                       const float* h_workspace, const void* out) {
  const auto& L = slab.layout;
  HM_CHECK(slab.base && slab.n_slots > 0, "slab must be allocated");
  HM_CHECK(plan.token_ptr && plan.pair_token && plan.pair_slot && plan.pair_weight,
           "plan arrays must not be null");
  HM_CHECK(plan.n_tokens >= 1 && plan.n_tokens <= 65535, "n_tokens must be in [1, 65535], got ",
           plan.n_tokens);
  HM_CHECK(plan.max_pairs >= 1 && plan.max_pairs <= 65535, "max_pairs must be in [1, 65535], got ",
           plan.max_pairs);
  HM_CHECK(x && h_workspace && out, "x, h_workspace and out must not be null");
  HM_CHECK(aligned16(x) && aligned16(h_workspace), "x and h_workspace must be 16-byte aligned");
  HM_CHECK(L.hidden % 32 == 0 && L.intermediate % 32 == 0,
           "decode kernels need hidden and intermediate multiples of 32, got H=", L.hidden,
           " I=", L.intermediate);
  HM_CHECK(L.hidden < (1 << 24) && L.intermediate < (1 << 24), "expert shape too large");
}

void launch_decode(const SlabView& slab, const DevicePlan& plan, const void* x, float* h_workspace,
                   void* out, OutDtype out_dtype, cudaStream_t stream) {
  check_decode_args(slab, plan, x, h_workspace, out);
  const KernelSlab sl = kernel_slab(slab);
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  const dim3 block(kWarps * 32);
  const dim3 grid1((sl.I + kWarps - 1) / kWarps, plan.max_pairs);
  const dim3 grid2((sl.H + kWarps - 1) / kWarps, plan.n_tokens);
  const bool q8 = slab.layout.format == WeightFormat::kQ8_0;
  if (q8)
    gate_up_q8_kernel<<<grid1, block, 0, stream>>>(sl, plan, xb, h_workspace);
  else
    gate_up_bf16_kernel<<<grid1, block, 0, stream>>>(sl, plan, xb, h_workspace);
  HM_CUDA_CHECK(cudaGetLastError());
  if (out_dtype == OutDtype::kFloat32) {
    auto* o = static_cast<float*>(out);
    if (q8)
      down_q8_kernel<<<grid2, block, 0, stream>>>(sl, plan, h_workspace, o);
    else
      down_bf16_kernel<<<grid2, block, 0, stream>>>(sl, plan, h_workspace, o);
  } else {
    auto* o = static_cast<__nv_bfloat16*>(out);
    if (q8)
      down_q8_kernel<<<grid2, block, 0, stream>>>(sl, plan, h_workspace, o);
    else
      down_bf16_kernel<<<grid2, block, 0, stream>>>(sl, plan, h_workspace, o);
  }
  HM_CUDA_CHECK(cudaGetLastError());
}

void launch_add_partials(void* out, OutDtype out_dtype, const float* partial, int64_t n,
                         cudaStream_t stream) {
  HM_CHECK(out && partial, "out and partial must not be null");
  HM_CHECK(n >= 0, "n must be >= 0, got ", n);
  if (n == 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 4096));
  if (out_dtype == OutDtype::kFloat32)
    add_partials_kernel<<<blocks, threads, 0, stream>>>(static_cast<float*>(out), partial, n);
  else
    add_partials_kernel<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(out), partial,
                                                        n);
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace hm::cuda
