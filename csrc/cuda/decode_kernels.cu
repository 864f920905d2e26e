// [NOTE] Decode expert kernels (few tokens, memory-bound): see expert_kernels.h for the math.
// Phase 1 (gate/up), default: gate_up_stream_kernel, a persistent grid streaming each warp's
//   contiguous range of (pair, row) rows through a cp.async ring (see its comment). The
//   one-warp-per-row grid below is kept for Q8_0 rows that are not 16-byte multiples and for
//   A/B runs (HM_DECODE_STREAM=0).
// Phase 1, one-warp-per-row grid: (ceil(I / 8), max_pairs), 8 warps per block, one warp per (pair,
// row).
//   BF16: each lane issues KC (<= 4) 16-byte loads of the gate row, KC of the up row and KC of x
//   before the first use (2 * KC weight loads in flight per lane), then sums in fp32.
//   Q8_0: the warp loads a piece of 64 blocks (2176 bytes = 136 x 16) of the gate and of the up
//   row with 16-byte loads (5 + 5 per lane, all in flight together), stores it to its own shared
//   buffer, and each lane decodes whole 34-byte blocks from there with 4-byte reads and a funnel
//   shift (the quants sit at 2 mod 4 or 0 mod 4); int8 -> fp32 by PRMT + FADD (no I2F). Rows that
//   are not a multiple of 16 bytes (n_in / 32 not a multiple of 8) are copied with 2-byte loads.
// Phase 2, default: down_async_kernel (all pairs' down rows of a token copied with cp.async at
//   once, see its comment); the register-load kernels below are kept for Q8_0 rows that are not
//   16-byte multiples and for A/B runs (HM_DECODE_DOWN=0).
// Phase 2 (down): grid (ceil(H / 8), n_tokens), one warp per (token, output row), so each out
//   element has exactly one writer. The warp walks the token's pairs (CSR token_ptr) in groups of
//   4 and loads the down rows of all 4 pairs before using any (BF16: 4 x KC 16-byte loads per
//   lane; Q8_0: pieces of 32 blocks = 1088 bytes, staged in shared memory like phase 1).
// Overlap: on sm_90+ phase 2 is launched as a programmatic dependent of phase 1 (PDL; phase 1
//   triggers at its start). Phase-2 blocks therefore start while phase 1's last blocks run, read
//   the plan and issue their first group's down-row loads (weights and plan are not written by
//   phase 1), and only then wait (griddepcontrol.wait) for phase 1's h. This hides the launch gap
//   and phase 1's tail. HM_DECODE_PDL=0 turns it off (for A/B benchmarks). Inside a CUDA graph the
//   launch becomes a programmatic edge.
// Both phases read the pair count from device memory and exit blocks beyond it (graph replay).
// h (fp32 [max_pairs, I]) is read with ld.global.ca after the wait: it is written by phase 1
// while phase 2 may already be running, so not through the read-only (nc) path.
// With Qwen3-30B-A3B (H=2048, I=768), 8 pairs: 6144 warps in phase 1 and 2048 in phase 2.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "cuda/cuda_check.h"
#include "cuda/expert_kernels.h"
#include "cuda/kernel_common.cuh"

namespace hm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxChunks = 4;  // BF16: 16-byte chunks per lane and row segment (template KC)
constexpr int kPairGroup = 4;  // phase 2: pairs whose down rows are loaded before any is used
constexpr int kStagePad = 16;  // q8_load_block_smem may read 4 bytes past a block
// Q8_0 pieces: multiples of 8 blocks (272 bytes = 17 x 16), so 16-byte chunks tile them exactly.
constexpr int kQ8P1Blocks = 64;  // phase 1: 2176 bytes
constexpr int kQ8P1Bytes = kQ8P1Blocks * kQ8BlockBytes;
constexpr int kQ8P1Chunks = (kQ8P1Bytes / 16 + 31) / 32;  // 5 per lane
constexpr int kQ8P2Blocks = 32;                           // phase 2: 1088 bytes
constexpr int kQ8P2Bytes = kQ8P2Blocks * kQ8BlockBytes;
constexpr int kQ8P2Chunks = (kQ8P2Bytes / 16 + 31) / 32;  // 3 per lane
static_assert(kQ8P1Bytes % 16 == 0 && kQ8P2Bytes % 16 == 0, "Q8_0 pieces must tile in 16 bytes");

struct KernelSlab {
  const uint8_t* base;
  std::size_t stride, gate_off, up_off, down_off;
  int H, I;
};

KernelSlab kernel_slab(const SlabView& s) {
  return {s.base,
          s.layout.stride,
          s.layout.gate_offset,
          s.layout.up_offset,
          s.layout.down_offset,
          static_cast<int>(s.layout.hidden),
          static_cast<int>(s.layout.intermediate)};
}

__device__ __forceinline__ const uint8_t* expert_ptr(const KernelSlab& sl, int slot) {
  return sl.base + static_cast<std::size_t>(slot) * sl.stride;
}

// A warp loads the nchunks (>= 1) 16-byte chunks of a 16-byte aligned range into registers,
// chunk c = lane + 32 k into r[k]. Indices past the end are clamped to the last chunk instead of
// predicated, so the N loads are unconditional and the compiler issues them all before any use
// (with predicated loads ptxas interleaved each load with its use); callers ignore those copies.
// The same clamping is used for every load batch below.
template <int N>
__device__ __forceinline__ void warp_load16(uint4 (&r)[N], const uint8_t* src, int nchunks,
                                            int lane) {
  const uint4* s = reinterpret_cast<const uint4*>(src);
#pragma unroll
  for (int k = 0; k < N; ++k) r[k] = dev::ld_stream(s + min(lane + 32 * k, nchunks - 1));
}

template <int N>
__device__ __forceinline__ void warp_store16(uint8_t* dst, const uint4 (&r)[N], int nchunks,
                                             int lane) {
  uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int c = lane + 32 * k;
    if (c < nchunks) d[c] = r[k];
  }
}

// Fallback for rows that are not 16-byte multiples: 2-byte copies (src and nbytes even).
__device__ __forceinline__ void warp_copy2(uint8_t* dst, const uint8_t* src, int nbytes, int lane) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int c = lane; c < nbytes / 2; c += 32) d[c] = s[c];
}

// ---------------------------------------------------------------- phase 1: gate/up -> h
// 16-byte asynchronous global -> shared copy (cp.async, sm_80+; L2 only). The copies hold no
// registers and the wait is a hard ordering point, so all of a lane's copies are in flight
// together: with register loads ptxas interleaved each load with its use (one load in flight).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
// Waits for all of this thread's cp.async copies; they are then visible to this thread.
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

template <int KC>
__global__ void __launch_bounds__(kWarps * 32)
    gate_up_bf16_kernel(KernelSlab sl, DevicePlan plan, const __nv_bfloat16* __restrict__ x,
                        float* __restrict__ h) {
  // Per warp: KC * 32 chunks of the gate row and of the up row (KC = 4: 4 KB per warp).
  __shared__ __align__(16) uint4 stage[kWarps][2][KC * 32];
  dev::pdl_launch_dependents();
  const int pair = blockIdx.y;
  if (pair >= plan.token_ptr[plan.n_tokens]) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= sl.I) return;
  const uint8_t* e = expert_ptr(sl, plan.pair_slot[pair]);
  const std::size_t row_bytes = static_cast<std::size_t>(sl.H) * 2;
  const uint4* g = reinterpret_cast<const uint4*>(e + sl.gate_off + row * row_bytes);
  const uint4* u = reinterpret_cast<const uint4*>(e + sl.up_off + row * row_bytes);
  const uint4* xv =
      reinterpret_cast<const uint4*>(x + static_cast<int64_t>(plan.pair_token[pair]) * sl.H);
  uint4* st_g = stage[warp][0];
  uint4* st_u = stage[warp][1];
  const int n16 = sl.H / 8;
  float sg = 0.f, su = 0.f;
  for (int c0 = 0; c0 < n16; c0 += 32 * KC) {
    uint4 xx[KC];
#pragma unroll
    for (int k = 0; k < KC; ++k) {  // clamped indices: 2 KC copies in flight per lane
      const int c = min(c0 + 32 * k + lane, n16 - 1);
      cp_async16(st_g + 32 * k + lane, g + c);
      cp_async16(st_u + 32 * k + lane, u + c);
    }
#pragma unroll
    for (int k = 0; k < KC; ++k) xx[k] = __ldg(xv + min(c0 + 32 * k + lane, n16 - 1));
    cp_async_wait_all();  // each lane reads back only the chunks it copied itself
#pragma unroll
    for (int k = 0; k < KC; ++k) {
      const bool ok = c0 + 32 * k + lane < n16;  // drop the clamped duplicates
      const float dg = dev::dot8_bf16(st_g[32 * k + lane], xx[k]);
      const float du = dev::dot8_bf16(st_u[32 * k + lane], xx[k]);
      sg += ok ? dg : 0.f;
      su += ok ? du : 0.f;
    }
  }
  sg = dev::warp_sum(sg);
  su = dev::warp_sum(su);
  if (lane == 0) h[static_cast<int64_t>(pair) * sl.I + row] = dev::silu(sg) * su;
}

__global__ void __launch_bounds__(kWarps * 32)
    gate_up_q8_kernel(KernelSlab sl, DevicePlan plan, const __nv_bfloat16* __restrict__ x,
                      float* __restrict__ h) {
  __shared__ __align__(16) uint8_t stage[kWarps][2][kQ8P1Bytes + kStagePad];
  dev::pdl_launch_dependents();
  const int pair = blockIdx.y;
  if (pair >= plan.token_ptr[plan.n_tokens]) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= sl.I) return;
  const uint8_t* e = expert_ptr(sl, plan.pair_slot[pair]);
  const int nb = sl.H / kQ8BlockSize;
  const std::size_t row_bytes = static_cast<std::size_t>(nb) * kQ8BlockBytes;
  // 16-byte path when rows are 16-byte multiples: matrices start 256-byte aligned, so every row
  // and every piece (a multiple of 2176 bytes into the row) is then 16-byte aligned too.
  const bool wide = row_bytes % 16 == 0;
  const uint8_t* g = e + sl.gate_off + row * row_bytes;
  const uint8_t* u = e + sl.up_off + row * row_bytes;
  const __nv_bfloat16* xr = x + static_cast<int64_t>(plan.pair_token[pair]) * sl.H;
  uint8_t* st_g = stage[warp][0];
  uint8_t* st_u = stage[warp][1];
  float sg = 0.f, su = 0.f;
  for (int b0 = 0; b0 < nb; b0 += kQ8P1Blocks) {
    const int nblk = min(kQ8P1Blocks, nb - b0);
    const int nbytes = nblk * kQ8BlockBytes;
    if (wide) {
      uint4 rg[kQ8P1Chunks], ru[kQ8P1Chunks];
      warp_load16(rg, g + b0 * kQ8BlockBytes, nbytes / 16, lane);
      warp_load16(ru, u + b0 * kQ8BlockBytes, nbytes / 16, lane);
      __syncwarp();  // scheduling fence: all 10 loads are issued before the first store waits
      warp_store16(st_g, rg, nbytes / 16, lane);
      warp_store16(st_u, ru, nbytes / 16, lane);
    } else {
      warp_copy2(st_g, g + b0 * kQ8BlockBytes, nbytes, lane);
      warp_copy2(st_u, u + b0 * kQ8BlockBytes, nbytes, lane);
    }
    __syncwarp();
    for (int b = lane; b < nblk; b += 32) {
      uint32_t qg[8], qu[8];
      const float dg = dev::q8_load_block_smem(st_g + b * kQ8BlockBytes, qg);
      const float du = dev::q8_load_block_smem(st_u + b * kQ8BlockBytes, qu);
      const uint4* xv = reinterpret_cast<const uint4*>(xr + (b0 + b) * kQ8BlockSize);
      float tg = 0.f, tu = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const uint4 xx = __ldg(xv + c);
        tg += dev::q8_dot8_bf16(qg[2 * c], qg[2 * c + 1], xx);
        tu += dev::q8_dot8_bf16(qu[2 * c], qu[2 * c + 1], xx);
      }
      sg = fmaf(dg, tg, sg);
      su = fmaf(du, tu, su);
    }
    __syncwarp();
  }
  sg = dev::warp_sum(sg);
  su = dev::warp_sum(su);
  if (lane == 0) h[static_cast<int64_t>(pair) * sl.I + row] = dev::silu(sg) * su;
}

// ---------------------------------------------------------------- phase 1, streaming version
// Persistent grid (blocks = what fits on the GPU at once, from the occupancy calculator), one
// contiguous range of (pair, row) rows per warp, split evenly from the DEVICE pair count. A warp
// walks its rows segment by segment (BF16: 2048 bytes = 1024 values; Q8_0: 32 blocks = 1088
// bytes) through a ring of NS shared-memory stages per warp, each stage holding the gate and the
// up segment: cp.async fills stage i + NS - 1 while stage i is computed, so every warp keeps
// NS - 1 segment pairs (BF16 8 KB at NS = 3, Q8_0 6.5 KB at NS = 4) in flight without holding
// registers, and DRAM sees one continuous stream instead of block-sized bursts. This removes the
// wave quantization of the one-warp-per-row grid (768 blocks of 8 warps on 132 SMs at 4-5
// resident blocks per SM: 1.2-1.5 waves). Q8_0 uses it when rows are 16-byte multiples.
constexpr int kStreamWarps = 4;
constexpr int kSegBf16 = 2048;              // bytes per BF16 segment (128 chunks)
constexpr int kSegQ8 = 32 * kQ8BlockBytes;  // 1088 bytes (68 chunks) per Q8_0 segment
template <bool Q8>
struct StreamCfg;
template <>
struct StreamCfg<false> {
  static constexpr int kSeg = kSegBf16, kStages = 3;
};
template <>
struct StreamCfg<true> {
  static constexpr int kSeg = kSegQ8, kStages = 4;
};
template <bool Q8>
__host__ __device__ constexpr int stream_stage_bytes() {
  return 2 * (StreamCfg<Q8>::kSeg + kStagePad);  // gate segment + pad, up segment + pad
}
template <bool Q8>
__host__ __device__ constexpr int stream_smem_bytes() {
  return kStreamWarps * StreamCfg<Q8>::kStages * stream_stage_bytes<Q8>();
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <bool Q8>
__global__ void __launch_bounds__(kStreamWarps * 32)
    gate_up_stream_kernel(KernelSlab sl, DevicePlan plan, const __nv_bfloat16* __restrict__ x,
                          float* __restrict__ h) {
  constexpr int SEG = StreamCfg<Q8>::kSeg, NS = StreamCfg<Q8>::kStages;
  constexpr int STAGE = stream_stage_bytes<Q8>();
  constexpr int CPL = (SEG / 16 + 31) / 32;  // 16-byte copies per lane and matrix: 4 / 3
  extern __shared__ __align__(16) uint8_t smem[];
  dev::pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint8_t* ring = smem + warp * NS * STAGE;
  const int64_t n_rows = static_cast<int64_t>(plan.token_ptr[plan.n_tokens]) * sl.I;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * kStreamWarps;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kStreamWarps + warp;
  const int64_t r_beg = n_rows * gw / n_warps, r_end = n_rows * (gw + 1) / n_warps;
  if (r_beg >= r_end) return;  // warp-uniform
  const int row_bytes = Q8 ? (sl.H / kQ8BlockSize) * kQ8BlockBytes : sl.H * 2;
  const int nseg = (row_bytes + SEG - 1) / SEG;
  const int64_t n_items = (r_end - r_beg) * nseg;

  // Item it = (row r_beg + it / nseg, segment it % nseg) goes to stage it % NS. Two cursors walk
  // the items incrementally (no 64-bit divisions per item): `in` issues, `cu` computes, NS - 1
  // behind. Every issue() commits one group (empty past the end), so "wait until NS - 1 groups
  // are pending" always means "item it has landed".
  struct Cursor {
    int pair, row, seg, stage;
  };
  const int pair0 = static_cast<int>(r_beg / sl.I);
  Cursor in{pair0, static_cast<int>(r_beg - int64_t{pair0} * sl.I), 0, 0};
  Cursor cu = in;
  auto advance = [&](Cursor& c) {
    if (++c.seg == nseg) {
      c.seg = 0;
      if (++c.row == sl.I) {
        c.row = 0;
        ++c.pair;
      }
    }
    if (++c.stage == NS) c.stage = 0;
  };
  int64_t n_issued = 0;
  auto issue = [&]() {
    if (n_issued < n_items) {
      const uint8_t* e = expert_ptr(sl, plan.pair_slot[in.pair]);
      const std::size_t off = static_cast<std::size_t>(in.row) * row_bytes + in.seg * SEG;
      const int nch = min(SEG, row_bytes - in.seg * SEG) / 16;
      const uint8_t* gs = e + sl.gate_off + off;
      const uint8_t* us = e + sl.up_off + off;
      uint8_t* st = ring + in.stage * STAGE;
#pragma unroll
      for (int k = 0; k < CPL; ++k) {
        const int c = lane + 32 * k;
        if (c < nch) {
          cp_async16(st + 16 * c, gs + 16 * c);
          cp_async16(st + SEG + kStagePad + 16 * c, us + 16 * c);
        }
      }
      advance(in);
      ++n_issued;
    }
    cp_async_commit();
  };
#pragma unroll
  for (int k = 0; k < NS - 1; ++k) issue();
  float sg = 0.f, su = 0.f;
  for (int64_t it = 0; it < n_items; ++it) {
    issue();
    cp_async_wait<NS - 1>();
    __syncwarp();  // every lane's copies of item it are visible to the whole warp
    const int s = cu.seg, pair = cu.pair;
    const int64_t rr = int64_t{pair} * sl.I + cu.row;
    const uint8_t* st = ring + cu.stage * STAGE;
    advance(cu);
    const __nv_bfloat16* xr = x + static_cast<int64_t>(plan.pair_token[pair]) * sl.H;
    if constexpr (!Q8) {
      const int nch = min(SEG, row_bytes - s * SEG) / 16;
      const uint4* g = reinterpret_cast<const uint4*>(st);
      const uint4* u = reinterpret_cast<const uint4*>(st + SEG + kStagePad);
      const uint4* xv = reinterpret_cast<const uint4*>(xr) + s * (SEG / 16);
#pragma unroll
      for (int k = 0; k < CPL; ++k) {
        const int c = lane + 32 * k;
        if (c < nch) {
          const uint4 xx = __ldg(xv + c);
          sg += dev::dot8_bf16(g[c], xx);
          su += dev::dot8_bf16(u[c], xx);
        }
      }
    } else {
      const int nblk = min(32, sl.H / kQ8BlockSize - s * 32);
      if (lane < nblk) {
        uint32_t qg[8], qu[8];
        const float dg = dev::q8_load_block_smem(st + lane * kQ8BlockBytes, qg);
        const float du = dev::q8_load_block_smem(st + SEG + kStagePad + lane * kQ8BlockBytes, qu);
        const uint4* xv = reinterpret_cast<const uint4*>(xr + (s * 32 + lane) * kQ8BlockSize);
        float tg = 0.f, tu = 0.f;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const uint4 xx = __ldg(xv + c);
          tg += dev::q8_dot8_bf16(qg[2 * c], qg[2 * c + 1], xx);
          tu += dev::q8_dot8_bf16(qu[2 * c], qu[2 * c + 1], xx);
        }
        sg = fmaf(dg, tg, sg);
        su = fmaf(du, tu, su);
      }
    }
    if (s == nseg - 1) {  // row complete (warp-uniform)
      const float g = dev::warp_sum(sg), u = dev::warp_sum(su);
      if (lane == 0) h[rr] = dev::silu(g) * u;  // h is [pairs, I]: row rr = pair * I + row
      sg = su = 0.f;
    }
    __syncwarp();  // every lane is done with stage it % NS before the next issue() refills it
  }
  cp_async_wait<0>();  // no copy may outlive the warp (only empty groups remain, but be exact)
}

// ---------------------------------------------------------------- phase 2: down, weighted sum
template <int KC, typename OutT>
__global__ void __launch_bounds__(kWarps * 32)
    down_bf16_kernel(KernelSlab sl, DevicePlan plan, const float* h, OutT* out) {
  const int t = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= sl.H) return;
  const int beg = plan.token_ptr[t], end = plan.token_ptr[t + 1];
  const std::size_t row_bytes = static_cast<std::size_t>(sl.I) * 2;
  const int n16 = sl.I / 8;
  float acc = 0.f;
  bool waited = false;
  for (int c0 = 0; c0 < n16; c0 += 32 * KC) {
    for (int p0 = beg; p0 < end; p0 += kPairGroup) {
      // Pairs past the token's end and chunks past the row's end are clamped (loads stay
      // unconditional, all kPairGroup * KC in flight) and their results dropped by selects.
      uint4 w[kPairGroup][KC];
#pragma unroll
      for (int j = 0; j < kPairGroup; ++j) {
        const int p = min(p0 + j, end - 1);
        const uint4* d = reinterpret_cast<const uint4*>(expert_ptr(sl, plan.pair_slot[p]) +
                                                        sl.down_off + row * row_bytes);
#pragma unroll
        for (int k = 0; k < KC; ++k) w[j][k] = dev::ld_stream(d + min(c0 + 32 * k + lane, n16 - 1));
      }
      if (!waited) {  // the first group's loads are in flight; now h must be complete
        dev::pdl_wait();
        waited = true;
      }
#pragma unroll
      for (int j = 0; j < kPairGroup; ++j) {
        const int p = min(p0 + j, end - 1);
        const float4* hp = reinterpret_cast<const float4*>(h + static_cast<int64_t>(p) * sl.I);
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < KC; ++k) {
          const int c = c0 + 32 * k + lane;
          const int cc = min(c, n16 - 1);
          const float v = dev::dot8_bf16_f32(w[j][k], __ldca(hp + 2 * cc), __ldca(hp + 2 * cc + 1));
          s += c < n16 ? v : 0.f;
        }
        const float contrib = plan.pair_weight[p] * s;
        acc += p0 + j < end ? contrib : 0.f;
      }
    }
  }
  if (!waited) dev::pdl_wait();
  acc = dev::warp_sum(acc);
  if (lane == 0) dev::add_out(out, static_cast<int64_t>(t) * sl.H + row, acc);
}

template <typename OutT>
__global__ void __launch_bounds__(kWarps * 32)
    down_q8_kernel(KernelSlab sl, DevicePlan plan, const float* h, OutT* out) {
  __shared__ __align__(16) uint8_t stage[kWarps][kPairGroup][kQ8P2Bytes + kStagePad];
  const int t = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= sl.H) return;
  const int beg = plan.token_ptr[t], end = plan.token_ptr[t + 1];
  const int nb = sl.I / kQ8BlockSize;
  const std::size_t row_bytes = static_cast<std::size_t>(nb) * kQ8BlockBytes;
  const bool wide = row_bytes % 16 == 0;  // as in phase 1 (pieces are multiples of 1088 bytes)
  float acc = 0.f;
  bool waited = false;
  for (int b0 = 0; b0 < nb; b0 += kQ8P2Blocks) {
    const int nblk = min(kQ8P2Blocks, nb - b0);
    const int nbytes = nblk * kQ8BlockBytes;
    for (int p0 = beg; p0 < end; p0 += kPairGroup) {
      const int np = min(kPairGroup, end - p0);
      if (wide) {
        uint4 r[kPairGroup][kQ8P2Chunks];  // pairs past np re-load pair np - 1, never stored
#pragma unroll
        for (int j = 0; j < kPairGroup; ++j) {
          const uint8_t* d = expert_ptr(sl, plan.pair_slot[p0 + min(j, np - 1)]) + sl.down_off +
                             row * row_bytes + b0 * kQ8BlockBytes;
          warp_load16(r[j], d, nbytes / 16, lane);
        }
        __syncwarp();  // scheduling fence, as in phase 1
#pragma unroll
        for (int j = 0; j < kPairGroup; ++j)
          warp_store16(stage[warp][j], r[j], j < np ? nbytes / 16 : 0, lane);
      } else {
        for (int j = 0; j < np; ++j)
          warp_copy2(stage[warp][j],
                     expert_ptr(sl, plan.pair_slot[p0 + j]) + sl.down_off + row * row_bytes +
                         b0 * kQ8BlockBytes,
                     nbytes, lane);
      }
      __syncwarp();
      if (!waited) {  // weights are staged; now h must be complete
        dev::pdl_wait();
        waited = true;
      }
      for (int it = lane; it < np * nblk; it += 32) {
        const int j = it / nblk, b = it - j * nblk;
        const int p = p0 + j;
        uint32_t q[8];
        const float d = dev::q8_load_block_smem(stage[warp][j] + b * kQ8BlockBytes, q);
        const float4* hp = reinterpret_cast<const float4*>(h + static_cast<int64_t>(p) * sl.I +
                                                           (b0 + b) * kQ8BlockSize);
        float s = 0.f;
#pragma unroll
        for (int c = 0; c < 4; ++c)
          s += dev::q8_dot8_f32(q[2 * c], q[2 * c + 1], __ldca(hp + 2 * c), __ldca(hp + 2 * c + 1));
        acc = fmaf(plan.pair_weight[p] * d, s, acc);
      }
      __syncwarp();
    }
  }
  if (!waited) dev::pdl_wait();
  acc = dev::warp_sum(acc);
  if (lane == 0) dev::add_out(out, static_cast<int64_t>(t) * sl.H + row, acc);
}

// ---------------------------------------------------------------- phase 2, all pairs in flight
// One warp per (token, output row) as above, but the down rows of up to kDownPairs (8) pairs of
// the token go global -> shared with cp.async at once (BF16: pieces of 1536 bytes = 768 values,
// 3 copies per lane and pair; Q8_0: pieces of 32 blocks = 1088 bytes), so with top-8 a warp waits
// for DRAM once instead of once per group of 4 register-loaded pairs. Measured reason (ncu, H200,
// 2026-11-28): the register version of Q8_0 phase 2 read 13.4 MB in 21 us (0.64 TB/s) with 16
// warps per SM, each waiting twice for DRAM and then for h. Used for BF16 and for Q8_0 rows that
// are 16-byte multiples unless HM_DECODE_DOWN=0.
constexpr int kDownPairs = 8;
template <bool Q8>
__host__ __device__ constexpr int down_piece() {
  return Q8 ? 32 * kQ8BlockBytes : 1536;
}
template <bool Q8>
__host__ __device__ constexpr int down_smem_bytes() {
  return kWarps * kDownPairs * (down_piece<Q8>() + kStagePad);
}

template <bool Q8, typename OutT>
__global__ void __launch_bounds__(kWarps * 32)
    down_async_kernel(KernelSlab sl, DevicePlan plan, const float* h, OutT* out) {
  constexpr int PIECE = down_piece<Q8>(), SLOT = PIECE + kStagePad;
  constexpr int CPL = (PIECE / 16 + 31) / 32;  // 3 copies per lane and pair
  extern __shared__ __align__(16) uint8_t smem[];
  const int t = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= sl.H) return;
  uint8_t* buf = smem + warp * kDownPairs * SLOT;
  const int beg = plan.token_ptr[t], end = plan.token_ptr[t + 1];
  const int row_bytes = Q8 ? (sl.I / kQ8BlockSize) * kQ8BlockBytes : sl.I * 2;
  const int npieces = (row_bytes + PIECE - 1) / PIECE;
  float acc = 0.f;
  bool waited = false;
  for (int pc = 0; pc < npieces; ++pc) {
    const int pbytes = min(PIECE, row_bytes - pc * PIECE);
    const int nch = pbytes / 16;
    for (int p0 = beg; p0 < end; p0 += kDownPairs) {
      const int np = min(kDownPairs, end - p0);
      for (int j = 0; j < np; ++j) {
        const uint8_t* d = expert_ptr(sl, plan.pair_slot[p0 + j]) + sl.down_off +
                           static_cast<std::size_t>(row) * row_bytes + pc * PIECE;
#pragma unroll
        for (int k = 0; k < CPL; ++k) {
          const int c = lane + 32 * k;
          if (c < nch) cp_async16(buf + j * SLOT + 16 * c, d + 16 * c);
        }
      }
      cp_async_wait_all();
      __syncwarp();   // every lane's copies are visible to the whole warp
      if (!waited) {  // the first pieces are in shared memory; now h must be complete
        dev::pdl_wait();
        waited = true;
      }
      if constexpr (!Q8) {
        for (int j = 0; j < np; ++j) {
          const int p = p0 + j;
          const float4* hp = reinterpret_cast<const float4*>(h + static_cast<int64_t>(p) * sl.I +
                                                             pc * (PIECE / 2));
          const uint4* w = reinterpret_cast<const uint4*>(buf + j * SLOT);
          float sum = 0.f;
#pragma unroll
          for (int k = 0; k < CPL; ++k) {
            const int c = lane + 32 * k;
            if (c < nch)
              sum += dev::dot8_bf16_f32(w[c], __ldca(hp + 2 * c), __ldca(hp + 2 * c + 1));
          }
          acc = fmaf(plan.pair_weight[p], sum, acc);
        }
      } else {
        const int nblk = pbytes / kQ8BlockBytes;
        for (int it = lane; it < np * nblk; it += 32) {
          const int j = it / nblk, b = it - j * nblk;
          const int p = p0 + j;
          uint32_t q[8];
          const float d = dev::q8_load_block_smem(buf + j * SLOT + b * kQ8BlockBytes, q);
          const float4* hp = reinterpret_cast<const float4*>(h + static_cast<int64_t>(p) * sl.I +
                                                             (pc * 32 + b) * kQ8BlockSize);
          float sum = 0.f;
#pragma unroll
          for (int c = 0; c < 4; ++c)
            sum += dev::q8_dot8_f32(q[2 * c], q[2 * c + 1], __ldca(hp + 2 * c),
                                    __ldca(hp + 2 * c + 1));
          acc = fmaf(plan.pair_weight[p] * d, sum, acc);
        }
      }
      __syncwarp();  // the buffer is refilled by the next group
    }
  }
  if (!waited) dev::pdl_wait();
  acc = dev::warp_sum(acc);
  if (lane == 0) dev::add_out(out, static_cast<int64_t>(t) * sl.H + row, acc);
}

template <typename OutT>
__global__ void add_partials_kernel(OutT* out, const float* __restrict__ partial, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dev::add_out(out, i, partial[i]);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Kernel choices per format, each overridable by an environment variable ("0" off, anything
// else on) for A/B benchmarks. Defaults from the H200 measurements of 2026-11-28 (session 2,
// CUDA graph of 16 decodes, 8 experts x 1 token, Qwen3-30B-A3B shapes):
//   BF16: streaming phase 1 + register-load phase 2 + PDL   29.7 us (async phase 2: 32.3 us)
//   Q8_0: streaming phase 1 + async phase 2, PDL off        35.9 us (PDL on: 38.1 us)
// (Q8_0 phase-2 blocks hold 70 KB of shared memory while they wait for phase 1 under PDL.)
bool env_flag(const char* name, bool dflt) {
  const char* env = std::getenv(name);
  return env == nullptr || env[0] == '\0' ? dflt : env[0] != '0';
}

// Programmatic dependent launch for phase 2: only on compute capability >= 9 (cached per device);
// HM_DECODE_PDL overrides the per-format default.
bool use_pdl(bool q8) {
  if (!env_flag("HM_DECODE_PDL", !q8)) return false;
  int dev = 0;
  HM_CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> cc_major[64];  // 0 = not yet asked
  if (dev < 0 || dev >= 64) return false;
  int major = cc_major[dev].load(std::memory_order_relaxed);
  if (major == 0) {
    HM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cc_major[dev].store(major, std::memory_order_relaxed);
  }
  return major >= 9;
}

// Streaming phase 1 (both formats) unless HM_DECODE_STREAM=0: one-warp-per-row grid instead.
bool use_stream() {
  return env_flag("HM_DECODE_STREAM", true);
}

// Phase 2 with all pairs' down rows in flight (down_async_kernel): default for Q8_0, register
// loads for BF16; HM_DECODE_DOWN overrides.
bool use_down_async(bool q8) {
  return env_flag("HM_DECODE_DOWN", q8);
}

// Raises down_async_kernel<Q8, OutT>'s dynamic shared-memory limit once per device (needed
// above 48 KB; one flag array per instantiation).
template <bool Q8, typename OutT>
void allow_down_smem() {
  int dev = 0;
  HM_CUDA_CHECK(cudaGetDevice(&dev));
  HM_CHECK_RT(dev >= 0 && dev < 64, "device index out of range: ", dev);
  static std::atomic<bool> done[64];
  if (done[dev].load(std::memory_order_acquire)) return;
  HM_CUDA_CHECK(cudaFuncSetAttribute(down_async_kernel<Q8, OutT>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     down_smem_bytes<Q8>()));
  done[dev].store(true, std::memory_order_release);
}

// Blocks of the streaming phase-1 kernel: as many as are resident at once on the current device
// (occupancy calculator, cached per device), but no more than the rows need (warps_needed rows at
// most, one warp each). Also raises the kernel's dynamic shared-memory limit once per device.
template <bool Q8>
int stream_grid(int64_t warps_needed) {
  int dev = 0;
  HM_CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> cached[64];  // 0 = not yet computed
  HM_CHECK_RT(dev >= 0 && dev < 64, "device index out of range: ", dev);
  int resident = cached[dev].load(std::memory_order_relaxed);
  if (resident == 0) {
    auto* fn = gate_up_stream_kernel<Q8>;
    HM_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       stream_smem_bytes<Q8>()));
    int per_sm = 0, sms = 0;
    HM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kStreamWarps * 32,
                                                                stream_smem_bytes<Q8>()));
    HM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    resident = std::max(1, per_sm) * sms;
    cached[dev].store(resident, std::memory_order_relaxed);
  }
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(resident, (warps_needed + kStreamWarps - 1) / kStreamWarps)));
}

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
                   cudaStream_t stream, bool programmatic, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = programmatic ? 1 : 0;
  HM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

// 16-byte chunks per lane and row segment for a row of n16 chunks: ceil(n16 / 32) in [1, 4].
int chunks_per_lane(int n16) {
  return std::clamp((n16 + 31) / 32, 1, kMaxChunks);
}

using GateUpFn = void (*)(KernelSlab, DevicePlan, const __nv_bfloat16*, float*);

GateUpFn gate_up_bf16(int kc) {
  switch (kc) {
    case 1:
      return gate_up_bf16_kernel<1>;
    case 2:
      return gate_up_bf16_kernel<2>;
    case 3:
      return gate_up_bf16_kernel<3>;
    default:
      return gate_up_bf16_kernel<4>;
  }
}

template <typename OutT>
void launch_down(const KernelSlab& sl, const DevicePlan& plan, const float* h, OutT* out, bool q8,
                 dim3 grid, dim3 block, cudaStream_t stream, bool pdl) {
  using Fn = void (*)(KernelSlab, DevicePlan, const float*, OutT*);
  const bool q8_wide = (sl.I / kQ8BlockSize) * kQ8BlockBytes % 16 == 0;
  if (use_down_async(q8) && (!q8 || q8_wide)) {
    Fn afn = q8 ? down_async_kernel<true, OutT> : down_async_kernel<false, OutT>;
    const int smem = q8 ? down_smem_bytes<true>() : down_smem_bytes<false>();
    if (q8)
      allow_down_smem<true, OutT>();
    else
      allow_down_smem<false, OutT>();
    launch_kernel(afn, grid, block, static_cast<std::size_t>(smem), stream, pdl, sl, plan, h, out);
    return;
  }
  Fn fn = down_q8_kernel<OutT>;
  if (!q8) {
    switch (chunks_per_lane(sl.I / 8)) {
      case 1:
        fn = down_bf16_kernel<1, OutT>;
        break;
      case 2:
        fn = down_bf16_kernel<2, OutT>;
        break;
      case 3:
        fn = down_bf16_kernel<3, OutT>;
        break;
      default:
        fn = down_bf16_kernel<4, OutT>;
        break;
    }
  }
  launch_kernel(fn, grid, block, 0, stream, pdl, sl, plan, h, out);
}

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
  HM_CHECK(aligned16(slab.base), "slab base must be 16-byte aligned");
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
  const bool pdl = use_pdl(q8);
  // Phase 1 is an ordinary launch: it overwrites h, which the previous decode's phase 2 reads.
  // Streaming version unless HM_DECODE_STREAM=0 or Q8_0 rows are not 16-byte multiples.
  const bool q8_wide = (sl.H / kQ8BlockSize) * kQ8BlockBytes % 16 == 0;
  if (use_stream() && (!q8 || q8_wide)) {
    const int64_t warps_needed = static_cast<int64_t>(plan.max_pairs) * sl.I;
    const int blocks = q8 ? stream_grid<true>(warps_needed) : stream_grid<false>(warps_needed);
    const std::size_t smem = q8 ? stream_smem_bytes<true>() : stream_smem_bytes<false>();
    if (q8)
      gate_up_stream_kernel<true>
          <<<blocks, kStreamWarps * 32, smem, stream>>>(sl, plan, xb, h_workspace);
    else
      gate_up_stream_kernel<false>
          <<<blocks, kStreamWarps * 32, smem, stream>>>(sl, plan, xb, h_workspace);
  } else if (q8) {
    gate_up_q8_kernel<<<grid1, block, 0, stream>>>(sl, plan, xb, h_workspace);
  } else {
    gate_up_bf16(chunks_per_lane(sl.H / 8))<<<grid1, block, 0, stream>>>(sl, plan, xb, h_workspace);
  }
  HM_CUDA_CHECK(cudaGetLastError());
  if (out_dtype == OutDtype::kFloat32)
    launch_down(sl, plan, h_workspace, static_cast<float*>(out), q8, grid2, block, stream, pdl);
  else
    launch_down(sl, plan, h_workspace, static_cast<__nv_bfloat16*>(out), q8, grid2, block, stream,
                pdl);
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
