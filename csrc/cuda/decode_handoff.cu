// [NOTE] Decode hand-off kernels (see decode_handoff.h for the sequence and why).
// Ordering across PCIe: a thread's writes to mapped memory become visible to the host in order
// only across a system-scope fence, so stage fences (every thread) before the barrier, and one
// thread then stores `ready` with release semantics at system scope. Waits (stage on `go`, finish
// on `done`) load with acquire semantics at system scope in one thread; the block reads the
// host-written data (plan, partial sums) after a barrier.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/decode_handoff.h"
#include "cuda/kernel_common.cuh"

namespace hm::cuda {
namespace {

constexpr int kStageThreads = 256;
constexpr int kFinishThreads = 512;

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// One block: the inputs are a few KB (T <= decode_max_tokens).
__global__ void decode_stage_kernel(DecodeStageArgs a) {
  const int tid = threadIdx.x;
  for (int i = tid; i < a.n_ids; i += blockDim.x) {
    a.ids_h[i] = a.ids[i];
    a.w_h[i] = a.w[i];
  }
  for (int i = tid; i < a.n_hint_halves; i += blockDim.x) a.hints_h[i] = a.hints[i];
  const auto* xs = reinterpret_cast<const uint4*>(a.x);
  auto* xd = reinterpret_cast<uint4*>(a.x_h);
  const int64_t n16 = a.n_x / 8;  // 8 bf16 per 16 bytes
  for (int64_t i = tid; i < n16; i += blockDim.x) xd[i] = xs[i];
  for (int64_t i = tid; i < a.n_x; i += blockDim.x) a.acc[i] = 0.f;
  if (tid == 0) *reinterpret_cast<volatile uint32_t*>(a.done) = 0u;
  __threadfence_system();
  __syncthreads();
  if (tid == 0) {
    store_release_sys(a.ready, a.ready_value);
    while (load_acquire_sys(a.go) == 0u) __nanosleep(128);
  }
  __syncthreads();  // with thread 0's acquire: the planner's plan writes are visible to the block
  for (int i = tid; i <= a.n_tokens; i += blockDim.x) a.plan_token_ptr[i] = a.plan_token_ptr_h[i];
  for (int i = tid; i < a.max_pairs; i += blockDim.x) {
    a.plan_pair_token[i] = a.plan_pair_token_h[i];
    a.plan_pair_slot[i] = a.plan_pair_slot_h[i];
    a.plan_pair_weight[i] = a.plan_pair_weight_h[i];
  }
  // go's next writer is the planner, after this layer's next ready (stream order).
  if (tid == 0) *reinterpret_cast<volatile uint32_t*>(a.go) = 0u;
}

template <typename OutT>
__device__ __forceinline__ void store_out(OutT* out, int64_t i, float v) {
  if constexpr (sizeof(OutT) == 4)
    out[i] = v;
  else
    out[i] = __float2bfloat16_rn(v);
}

template <typename OutT>
__global__ void decode_finish_kernel(DecodeFinishArgs a, OutT* out) {
  if (threadIdx.x == 0) {
    if (blockIdx.x == 0) store_release_sys(a.kdone, 1u);
    while (load_acquire_sys(a.done) == 0u) __nanosleep(256);
  }
  __syncthreads();
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // The partial sums come over PCIe: a thread loads its 4 values before any store (the compiler
  // cannot move a load above a store to `out`, which might alias: with one value per iteration
  // each load waited for the previous round trip).
  if (a.vec4) {
    const auto* acc4 = reinterpret_cast<const float4*>(a.acc);
    const auto* part4 = reinterpret_cast<const float4*>(a.partial);
    for (int64_t i = first; i < a.n / 4; i += step) {
      const float4 p = part4[i], g = acc4[i];
      store_out(out, 4 * i, g.x + p.x);
      store_out(out, 4 * i + 1, g.y + p.y);
      store_out(out, 4 * i + 2, g.z + p.z);
      store_out(out, 4 * i + 3, g.w + p.w);
    }
    return;
  }
  for (int64_t i = first; i < a.n; i += step) store_out(out, i, a.acc[i] + a.partial[i]);
}

}  // namespace

void launch_decode_stage(const DecodeStageArgs& a, cudaStream_t stream) {
  HM_CHECK(a.ids && a.w && a.x && a.ids_h && a.w_h && a.x_h && a.acc && a.done && a.ready,
           "decode stage: buffers must not be null");
  HM_CHECK(a.n_ids >= 1 && a.n_x >= 8 && a.n_x % 8 == 0 && a.n_hint_halves >= 0,
           "decode stage: n_ids >= 1, n_x a positive multiple of 8 and n_hint_halves >= 0, got ",
           a.n_ids, ", ", a.n_x, ", ", a.n_hint_halves);
  HM_CHECK(a.n_hint_halves == 0 || (a.hints && a.hints_h), "decode stage: hints must not be null");
  HM_CHECK((reinterpret_cast<uintptr_t>(a.x) & 15u) == 0 &&
               (reinterpret_cast<uintptr_t>(a.x_h) & 15u) == 0,
           "decode stage: x and its host buffer must be 16-byte aligned");
  HM_CHECK(a.ready_value != 0, "decode stage: ready_value must be non-zero");
  HM_CHECK(a.go && a.plan_token_ptr_h && a.plan_pair_token_h && a.plan_pair_slot_h &&
               a.plan_pair_weight_h && a.plan_token_ptr && a.plan_pair_token && a.plan_pair_slot &&
               a.plan_pair_weight,
           "decode stage: go and the plan buffers must not be null");
  HM_CHECK(a.n_tokens >= 1 && a.max_pairs >= 1,
           "decode stage: n_tokens and max_pairs must be >= 1");
  decode_stage_kernel<<<1, kStageThreads, 0, stream>>>(a);
  HM_CUDA_CHECK(cudaGetLastError());
}

void launch_decode_finish(const DecodeFinishArgs& a, cudaStream_t stream) {
  HM_CHECK(a.acc && a.partial && a.out && a.kdone && a.done,
           "decode finish: buffers must not be null");
  HM_CHECK(a.n >= 1, "decode finish: n must be >= 1, got ", a.n);
  DecodeFinishArgs v = a;
  v.vec4 = a.n % 4 == 0 && (reinterpret_cast<uintptr_t>(a.acc) & 15u) == 0 &&
           (reinterpret_cast<uintptr_t>(a.partial) & 15u) == 0;
  // Few blocks: each polls `done` over PCIe once per ~0.3 us while the CPU works. Up to 16 x 512
  // threads: one vector load each up to T * H = 32768 values (T = 16 at H = 2048).
  const int64_t per_thread = v.vec4 ? 4 : 1;
  const int blocks = static_cast<int>(std::min<int64_t>(
      (a.n + kFinishThreads * per_thread - 1) / (kFinishThreads * per_thread), 16));
  if (a.out_dtype == OutDtype::kFloat32)
    decode_finish_kernel<<<blocks, kFinishThreads, 0, stream>>>(v, static_cast<float*>(a.out));
  else
    decode_finish_kernel<<<blocks, kFinishThreads, 0, stream>>>(v,
                                                                static_cast<__nv_bfloat16*>(a.out));
  HM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace hm::cuda
