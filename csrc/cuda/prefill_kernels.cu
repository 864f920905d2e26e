// [NOTE] Prefill expert path (many tokens): grouped tensor-core GEMMs per slot.
// Host: sort the plan's pairs by slot ("sorted position" = index in that order), cut each slot's
// pairs into tiles of 64 rows, build a token -> sorted positions CSR, upload (pinned staging).
// Kernel 1, gate/up: per (tile, 64 columns of I): C_g = A x gate^T, C_u = A x up^T, A = x rows of
//   the tile's tokens (gathered), K = H; h[pos, i] = bf16(silu(C_g) * C_u).
// Kernel 2, down: per (tile, 128 columns of H): y[pos, r] = w_pos * (h[pos] . down[r]), K = I.
// Kernel 3: out[t, :] += sum of y[pos, :] over the token's positions (one writer per element).
// GEMM tile: 64 (pairs) x 128 (weight rows) x 32 (K), 4 warps each 32 x 64, mma.sync m16n8k16
// bf16 with fp32 accumulators; operands go global -> registers -> shared (double buffered, one
// barrier per K step) and are read with ldmatrix. Q8_0: a K step of 32 is exactly one Q8_0 block
// per weight row, dequantized to bf16 while being stored to shared memory. Rows are padded to
// 40 bf16 (80 bytes) so ldmatrix's 8 row addresses fall in distinct banks.
// The weights are read once per 64-pair tile: with T=512 and top-8 over 128 experts (~32 pairs
// per expert) the path is bound by HBM reads of the weights, like torch's grouped GEMM.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/expert_kernels.h"
#include "cuda/kernel_common.cuh"

namespace hm::cuda {
namespace {

constexpr int kBM = 64, kBN = 128, kBK = 32, kPad = 40, kThreads = 128;

struct GemmArgs {
  const uint8_t* base;
  std::size_t stride;
  std::size_t b_off0, b_off1;  // gate and up offsets (kernel 1) or down offset twice (kernel 2)
  std::size_t b_row_bytes;     // bytes of one weight row (K values)
  int K, N;                    // reduction length, output columns (I for gate/up, H for down)
  const int32_t* tile_slot;
  const int32_t* tile_pos0;
  const int32_t* tile_rows;
  const int32_t* a_index;   // per sorted position: row of A (token) or nullptr (A row = position)
  const __nv_bfloat16* A;   // [*, K]
  const float* pos_weight;  // per sorted position (kernel 2)
  __nv_bfloat16* h_out;     // kernel 1: [P, N]
  float* y_out;             // kernel 2: [P, N]
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared-memory row of B for n-tile j (8 rows) of warp column wn.
template <bool kGateUp>
__device__ __forceinline__ int b_tile_row(int j, int wn) {
  if (kGateUp) return j < 4 ? wn * 32 + j * 8 : 64 + wn * 32 + (j - 4) * 8;
  return wn * 64 + j * 8;
}

template <bool kGateUp, bool kQ8>
__global__ void __launch_bounds__(kThreads) grouped_mma_kernel(GemmArgs g) {
  __shared__ __align__(16) __nv_bfloat16 As[2][kBM][kPad];
  __shared__ __align__(16) __nv_bfloat16 Bs[2][kBN][kPad];
  const int tile = blockIdx.y;
  const int slot = g.tile_slot[tile], pos0 = g.tile_pos0[tile], rows = g.tile_rows[tile];
  const int n0 = blockIdx.x * (kGateUp ? kBN / 2 : kBN);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  const uint8_t* e = g.base + static_cast<std::size_t>(slot) * g.stride;

  // This thread's A rows (2 chunks of 16 bytes per K step) and B rows.
  const __nv_bfloat16* a_src[2];
  for (int j = 0; j < 2; ++j) {
    const int r = (tid + j * kThreads) >> 2;
    const int pos = pos0 + r;
    a_src[j] = nullptr;
    if (r < rows) {
      const int64_t arow = g.a_index ? g.a_index[pos] : pos;
      a_src[j] = g.A + arow * g.K + ((tid + j * kThreads) & 3) * 8;
    }
  }
  auto b_row_ptr = [&](int brow) -> const uint8_t* {
    int n;
    std::size_t off;
    if (kGateUp) {
      n = n0 + (brow & 63);
      off = brow < 64 ? g.b_off0 : g.b_off1;
    } else {
      n = n0 + brow;
      off = g.b_off0;
    }
    return n < g.N ? e + off + static_cast<std::size_t>(n) * g.b_row_bytes : nullptr;
  };
  constexpr int kBChunks = kQ8 ? 1 : 4;  // per thread per K step
  const uint8_t* b_src[kBChunks];
  for (int j = 0; j < kBChunks; ++j) {
    const int c = tid + j * kThreads;
    b_src[j] = kQ8 ? b_row_ptr(tid) : b_row_ptr(c >> 2);
  }

  uint4 ra[2];
  uint4 rb[4];
  uint16_t rq[17];
  auto load_regs = [&](int kt) {
    const int k0 = kt * kBK;
    for (int j = 0; j < 2; ++j)
      ra[j] =
          a_src[j] ? __ldg(reinterpret_cast<const uint4*>(a_src[j] + k0)) : make_uint4(0, 0, 0, 0);
    if (kQ8) {
      const uint16_t* q =
          b_src[0] ? reinterpret_cast<const uint16_t*>(b_src[0] + kt * kQ8BlockBytes) : nullptr;
#pragma unroll
      for (int i = 0; i < 17; ++i) rq[i] = q ? __ldcs(q + i) : 0;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = tid + j * kThreads;
        rb[j] = b_src[j] ? dev::ld_stream(reinterpret_cast<const uint4*>(
                               b_src[j] + static_cast<std::size_t>(k0) * 2 + (c & 3) * 16))
                         : make_uint4(0, 0, 0, 0);
      }
    }
  };
  auto store_smem = [&](int buf) {
    for (int j = 0; j < 2; ++j) {
      const int c = tid + j * kThreads;
      *reinterpret_cast<uint4*>(&As[buf][c >> 2][(c & 3) * 8]) = ra[j];
    }
    if (kQ8) {
      const float d = __half2float(__ushort_as_half(rq[0]));
      __nv_bfloat162 v[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const uint16_t qq = rq[1 + i];
        v[i] = __floats2bfloat162_rn(d * static_cast<float>(static_cast<int8_t>(qq & 0xff)),
                                     d * static_cast<float>(static_cast<int8_t>(qq >> 8)));
      }
      uint4* dst = reinterpret_cast<uint4*>(&Bs[buf][tid][0]);
      const uint4* src = reinterpret_cast<const uint4*>(v);
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[i] = src[i];
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = tid + j * kThreads;
        *reinterpret_cast<uint4*>(&Bs[buf][c >> 2][(c & 3) * 8]) = rb[j];
      }
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][j][q] = 0.f;

  const int KT = g.K / kBK;
  load_regs(0);
  store_smem(0);
  __syncthreads();
  for (int kt = 0; kt < KT; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < KT) load_regs(kt + 1);
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldmatrix_x4(af[mi], &As[cur][wm * 32 + mi * 16 + (lane & 15)][ks + (lane >> 4) * 8]);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int j0 = 2 * q, j1 = 2 * q + 1;
        const int jr = (lane >> 4) ? j1 : j0;
        uint32_t bf[4];
        ldmatrix_x4(bf,
                    &Bs[cur][b_tile_row<kGateUp>(jr, wn) + (lane & 7)][ks + ((lane >> 3) & 1) * 8]);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_bf16(acc[mi][j0], af[mi], bf[0], bf[1]);
          mma_bf16(acc[mi][j1], af[mi], bf[2], bf[3]);
        }
      }
    }
    if (kt + 1 < KT) store_smem(cur ^ 1);
    __syncthreads();
  }

  // Epilogue: c0,c1 at (row lane/4, cols 2*(lane%4)+{0,1}); c2,c3 at row + 8.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm * 32 + mi * 16 + (lane >> 2) + half * 8;
      if (r >= rows) continue;
      const int64_t pos = pos0 + r;
      if (kGateUp) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int n = n0 + wn * 32 + j * 8 + 2 * (lane & 3);
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            if (n + c >= g.N) continue;
            const float gv = acc[mi][j][half * 2 + c], uv = acc[mi][j + 4][half * 2 + c];
            g.h_out[pos * g.N + n + c] = __float2bfloat16(dev::silu(gv) * uv);
          }
        }
      } else {
        const float w = g.pos_weight[pos];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int n = n0 + wn * 64 + j * 8 + 2 * (lane & 3);
#pragma unroll
          for (int c = 0; c < 2; ++c)
            if (n + c < g.N) g.y_out[pos * g.N + n + c] = w * acc[mi][j][half * 2 + c];
        }
      }
    }
  }
}

template <typename OutT>
__global__ void reduce_tokens_kernel(const float* __restrict__ y, const int32_t* tok_ptr,
                                     const int32_t* tok_pos, int N, OutT* out) {
  const int t = blockIdx.y;
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float s = 0.f;
  for (int i = tok_ptr[t]; i < tok_ptr[t + 1]; ++i)
    s += y[static_cast<int64_t>(tok_pos[i]) * N + n];
  dev::add_out(out, static_cast<int64_t>(t) * N + n, s);
}

template <bool kGateUp>
void launch_gemm(const GemmArgs& g, int n_tiles, bool q8, cudaStream_t stream) {
  const int cols = kGateUp ? kBN / 2 : kBN;
  const dim3 grid((g.N + cols - 1) / cols, n_tiles);
  if (q8)
    grouped_mma_kernel<kGateUp, true><<<grid, kThreads, 0, stream>>>(g);
  else
    grouped_mma_kernel<kGateUp, false><<<grid, kThreads, 0, stream>>>(g);
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

PrefillRunner::~PrefillRunner() {
  if (upload_done_) {
    (void)cudaEventSynchronize(static_cast<cudaEvent_t>(upload_done_));
    (void)cudaEventDestroy(static_cast<cudaEvent_t>(upload_done_));
  }
  (void)cudaFree(d_ints_);
  (void)cudaFreeHost(h_ints_);
  (void)cudaFree(d_h_);
  (void)cudaFree(d_y_);
}

void PrefillRunner::reserve(std::size_t int_bytes, std::size_t h_bytes, std::size_t y_bytes) {
  auto grow_dev = [](auto*& p, std::size_t& cap, std::size_t want, const char* what) {
    if (want <= cap) return;
    want = std::max(want, cap * 3 / 2);
    (void)cudaFree(p);
    p = nullptr;
    cap = 0;
    void* q = nullptr;
    const cudaError_t err = cudaMalloc(&q, want);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      std::size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      HM_CHECK_RT(false, "out of device memory for the prefill ", what, " workspace: ", want,
                  " bytes asked, ", free_b, " bytes free");
    }
    p = static_cast<std::remove_reference_t<decltype(p)>>(q);
    cap = want;
  };
  if (int_bytes > ints_cap_) {
    std::size_t cap = ints_cap_;
    grow_dev(d_ints_, cap, int_bytes, "plan");
    (void)cudaFreeHost(h_ints_);
    h_ints_ = nullptr;
    void* q = nullptr;
    HM_CUDA_CHECK(cudaHostAlloc(&q, cap, cudaHostAllocDefault));
    h_ints_ = static_cast<uint8_t*>(q);
    ints_cap_ = cap;
  }
  grow_dev(d_h_, h_cap_, h_bytes, "intermediate");
  grow_dev(d_y_, y_cap_, y_bytes, "per-pair output");
}

void PrefillRunner::run(const SlabView& slab, const int32_t* pair_token, const int32_t* pair_slot,
                        const float* pair_weight, int n_pairs, int n_tokens, const void* x,
                        void* out, OutDtype out_dtype, cudaStream_t stream) {
  const auto& L = slab.layout;
  HM_CHECK(slab.base && slab.n_slots > 0, "slab must be allocated");
  HM_CHECK(n_pairs >= 1, "n_pairs must be >= 1, got ", n_pairs);
  HM_CHECK(n_tokens >= 1, "n_tokens must be >= 1, got ", n_tokens);
  HM_CHECK(pair_token && pair_slot && pair_weight && x && out, "null pointer argument");
  HM_CHECK((reinterpret_cast<uintptr_t>(x) & 15u) == 0, "x must be 16-byte aligned");
  HM_CHECK(L.hidden % kBK == 0 && L.intermediate % kBK == 0,
           "prefill needs hidden and intermediate multiples of 32, got H=", L.hidden,
           " I=", L.intermediate);
  for (int p = 0; p < n_pairs; ++p) {
    HM_CHECK(pair_token[p] >= 0 && pair_token[p] < n_tokens, "pair ", p, ": token must be in [0, ",
             n_tokens, "), got ", pair_token[p]);
    HM_CHECK(pair_slot[p] >= 0 && pair_slot[p] < slab.n_slots, "pair ", p, ": slot must be in [0, ",
             slab.n_slots, "), got ", pair_slot[p]);
  }
  // Sort by slot; tiles of kBM rows per slot group; token -> positions CSR.
  std::vector<int32_t> order(static_cast<std::size_t>(n_pairs));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return pair_slot[a] < pair_slot[b]; });
  std::vector<int32_t> s_token(n_pairs), tile_slot, tile_pos0, tile_rows;
  std::vector<float> s_weight(n_pairs);
  std::vector<int32_t> tok_ptr(static_cast<std::size_t>(n_tokens) + 1, 0), tok_pos(n_pairs);
  for (int i = 0; i < n_pairs; ++i) {
    s_token[i] = pair_token[order[i]];
    s_weight[i] = pair_weight[order[i]];
    ++tok_ptr[s_token[i] + 1];
  }
  for (int i = 0; i < n_pairs;) {
    int j = i;
    while (j < n_pairs && pair_slot[order[j]] == pair_slot[order[i]]) ++j;
    for (int m = i; m < j; m += kBM) {
      tile_slot.push_back(pair_slot[order[i]]);
      tile_pos0.push_back(m);
      tile_rows.push_back(std::min(kBM, j - m));
    }
    i = j;
  }
  std::partial_sum(tok_ptr.begin(), tok_ptr.end(), tok_ptr.begin());
  {
    std::vector<int32_t> fill(tok_ptr.begin(), tok_ptr.end() - 1);
    for (int i = 0; i < n_pairs; ++i) tok_pos[fill[s_token[i]]++] = i;
  }
  const int n_tiles = static_cast<int>(tile_slot.size());
  HM_CHECK(n_tiles <= 65535 && n_tokens <= 65535, "prefill plan too large: ", n_tiles, " tiles, ",
           n_tokens, " tokens (limit 65535 each)");

  // Pack [s_token | s_weight | tile_slot | tile_pos0 | tile_rows | tok_ptr | tok_pos].
  const std::size_t n_ints = 3 * static_cast<std::size_t>(n_pairs) + 3 * n_tiles + n_tokens + 1;
  const std::size_t P = static_cast<std::size_t>(n_pairs);
  reserve(n_ints * 4, P * L.intermediate * 2, P * L.hidden * 4);
  if (!upload_done_) {
    cudaEvent_t ev = nullptr;
    HM_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    upload_done_ = ev;
  }
  HM_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(upload_done_)));
  int32_t* hi = reinterpret_cast<int32_t*>(h_ints_);
  std::size_t at = 0;
  auto put = [&](const void* src, std::size_t n) {
    std::memcpy(hi + at, src, n * 4);
    const std::size_t start = at;
    at += n;
    return reinterpret_cast<int32_t*>(d_ints_) + start;
  };
  const int32_t* d_s_token = put(s_token.data(), P);
  const float* d_s_weight = reinterpret_cast<const float*>(put(s_weight.data(), P));
  const int32_t* d_tile_slot = put(tile_slot.data(), n_tiles);
  const int32_t* d_tile_pos0 = put(tile_pos0.data(), n_tiles);
  const int32_t* d_tile_rows = put(tile_rows.data(), n_tiles);
  const int32_t* d_tok_ptr = put(tok_ptr.data(), tok_ptr.size());
  const int32_t* d_tok_pos = put(tok_pos.data(), P);
  HM_CUDA_CHECK(cudaMemcpyAsync(d_ints_, h_ints_, at * 4, cudaMemcpyHostToDevice, stream));
  HM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(upload_done_), stream));

  const bool q8 = L.format == WeightFormat::kQ8_0;
  auto* h = static_cast<__nv_bfloat16*>(d_h_);
  GemmArgs g1{};
  g1.base = slab.base;
  g1.stride = L.stride;
  g1.b_off0 = L.gate_offset;
  g1.b_off1 = L.up_offset;
  g1.b_row_bytes = row_bytes(L.format, L.hidden);
  g1.K = static_cast<int>(L.hidden);
  g1.N = static_cast<int>(L.intermediate);
  g1.tile_slot = d_tile_slot;
  g1.tile_pos0 = d_tile_pos0;
  g1.tile_rows = d_tile_rows;
  g1.a_index = d_s_token;
  g1.A = static_cast<const __nv_bfloat16*>(x);
  g1.h_out = h;
  launch_gemm<true>(g1, n_tiles, q8, stream);

  GemmArgs g2 = g1;
  g2.b_off0 = g2.b_off1 = L.down_offset;
  g2.b_row_bytes = row_bytes(L.format, L.intermediate);
  g2.K = static_cast<int>(L.intermediate);
  g2.N = static_cast<int>(L.hidden);
  g2.a_index = nullptr;
  g2.A = h;
  g2.pos_weight = d_s_weight;
  g2.h_out = nullptr;
  g2.y_out = d_y_;
  launch_gemm<false>(g2, n_tiles, q8, stream);

  const dim3 grid3((g2.N + 255) / 256, n_tokens);
  if (out_dtype == OutDtype::kFloat32)
    reduce_tokens_kernel<<<grid3, 256, 0, stream>>>(d_y_, d_tok_ptr, d_tok_pos, g2.N,
                                                    static_cast<float*>(out));
  else
    reduce_tokens_kernel<<<grid3, 256, 0, stream>>>(d_y_, d_tok_ptr, d_tok_pos, g2.N,
                                                    static_cast<__nv_bfloat16*>(out));
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace hm::cuda
