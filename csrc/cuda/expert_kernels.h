// [NOTE] GPU expert kernels (DESIGN.md section 6, issue 5 item 4) on raw pointers and cudaStream_t.
//
// A plan is a list of (token, slot, weight) pairs: pair p computes
//   out[token_p, :] += weight_p * down_s @ (silu(gate_s @ x[token_p]) * (up_s @ x[token_p]))
// with the expert in slab slot s = slot_p (byte layout of core/weight_format.h). x is bf16 [T, H];
// accumulation is fp32; out is fp32 or bf16 [T, H] and is ADDED to (read-modify-write, one
// writer per element, so results are deterministic).
//
// Decode (few tokens): launch_decode = two kernels in one stream, which is what "one launch per
// layer" means here (one launch per phase, each covering every planned pair of the layer):
//   phase 1: h[p, i] = silu(gate_s[i] . x[t]) * (up_s[i] . x[t]) for all pairs and rows, one warp
//            per (pair, row), 16-byte loads, fp32 accumulation, h in fp32 [max_pairs, I].
//   phase 2: out[t, r] += sum_{p of t} w_p * (down_s[r] . h[p]), one warp per (token, row).
// The plan lives in device memory (or mapped pinned memory): the grid is sized by max_pairs and
// the kernels read the real pair count token_ptr[n_tokens], so a captured CUDA graph can replay
// plans of any size up to max_pairs.
//
// Prefill (many tokens): PrefillRunner groups pairs per slot on the host and runs two grouped
// tensor-core GEMMs (mma.sync m16n8k16 bf16, fp32 accumulate; Q8_0 tiles are dequantized to bf16
// in shared memory): [pairs of e, H] x gate/up_e^T -> silu*up -> h (bf16), then h x down_e^T
// scaled by w into a per-pair buffer, then a per-token reduction adds them into out.
//
// launch_add_partials: out[T, H] (fp32 or bf16) += partial[T, H] (fp32): the CPU's partial sums.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/weight_format.h"

namespace hm::cuda {

enum class OutDtype : int { kFloat32 = 0, kBFloat16 = 1 };

// The slab as the kernels see it: slot s's expert starts at base + s * layout.stride.
struct SlabView {
  const uint8_t* base = nullptr;
  int n_slots = 0;
  ExpertLayout layout;
};

// A decode plan in device-visible memory; pairs are sorted by token.
struct DevicePlan {
  const int32_t* token_ptr = nullptr;   // [n_tokens + 1]: pairs of t are [ptr[t], ptr[t + 1])
  const int32_t* pair_token = nullptr;  // [max_pairs]
  const int32_t* pair_slot = nullptr;   // [max_pairs], each in [0, n_slots)
  const float* pair_weight = nullptr;   // [max_pairs]
  int n_tokens = 0;
  int max_pairs = 0;  // grid size; token_ptr[n_tokens] <= max_pairs pairs are computed
};

// Checks what can be checked on the host (shapes, alignment); ValueError otherwise.
void check_decode_args(const SlabView& slab, const DevicePlan& plan, const void* x,
                       const float* h_workspace, const void* out);
// x: bf16 [n_tokens, H]; h_workspace: fp32 [max_pairs, I]; out: [n_tokens, H] of out_dtype.
void launch_decode(const SlabView& slab, const DevicePlan& plan, const void* x, float* h_workspace,
                   void* out, OutDtype out_dtype, cudaStream_t stream);

// out[i] += partial[i] for i < n (out fp32 or bf16).
void launch_add_partials(void* out, OutDtype out_dtype, const float* partial, int64_t n,
                         cudaStream_t stream);

// Host-driven prefill path. Owns its device workspace (grown on demand) and pinned staging.
// run(): the plan is on the host (token, slot, weight per pair, any order); x bf16 [T, H] and out
// [T, H] are device pointers. Enqueues on `stream`; the staging buffer is reused by the next run()
// only after this run's upload has completed.
class PrefillRunner {
 public:
  PrefillRunner() = default;
  ~PrefillRunner();
  PrefillRunner(const PrefillRunner&) = delete;
  PrefillRunner& operator=(const PrefillRunner&) = delete;

  void run(const SlabView& slab, const int32_t* pair_token, const int32_t* pair_slot,
           const float* pair_weight, int n_pairs, int n_tokens, const void* x, void* out,
           OutDtype out_dtype, cudaStream_t stream);

 private:
  void reserve(std::size_t int_bytes, std::size_t h_bytes, std::size_t y_bytes);
  uint8_t* d_ints_ = nullptr;  // sorted plan arrays and tile lists
  uint8_t* h_ints_ = nullptr;  // pinned staging of the same
  std::size_t ints_cap_ = 0;
  void* d_h_ = nullptr;  // bf16 [P, I]
  std::size_t h_cap_ = 0;
  float* d_y_ = nullptr;  // fp32 [P, H], weighted per-pair outputs
  std::size_t y_cap_ = 0;
  void* upload_done_ = nullptr;  // cudaEvent_t
};

}  // namespace hm::cuda
