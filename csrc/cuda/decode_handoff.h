// [NOTE] Decode hand-off kernels: the doorbell decode sequence with fewer stream nodes.
//
// A decode layer used to be 14 stream nodes (3 D2H copies, 3 + 3 memory operations, 2 expert
// kernels, an add kernel, plus the caller's zero-fill and dtype cast); on a replayed CUDA graph
// each dependent node costs ~1.5-3 us of front-end latency, which summed to ~40 us per layer on the
// H200 (bench/RESULTS.md, timeline "gap"). Fused, a layer is:
//   stage kernel   copies ids / weights / x / hints into the layer's mapped host buffers, zeroes
//                  the fp32 accumulator, resets `done`, then (after a system fence) rings `ready`;
//                  waits for `go` (the planner rings it once the plan is in mapped memory), copies
//                  the plan into device memory and resets `go`
//   decode kernels phase 1 + 2 accumulate the GPU's experts into the accumulator, reading the
//                  plan from device memory (from mapped memory, each warp paid a chain of PCIe
//                  round trips: measured 42 us for 5 experts vs 20 us in the kernel benchmark)
//   finish kernel  rings `kdone` (the slots may be released), waits until the planner rang `done`
//                  (the CPU's partial sums are final), then out = accumulator + partial in out's
//                  dtype (fp32 or bf16): `out` is overwritten, never read. The partial sums are
//                  read over PCIe in 16-byte loads, all of a thread's loads before its stores: at
//                  decode sizes one round trip per thread (was one per value, four in a row).
// Memory words are 32-bit, one per cache line, in mapped host memory (device pointers here).
// The finish kernel polls `done` with a short sleep between PCIe reads (a few hundred ns). Every
// block polls: `done` is reset by the NEXT step's stage kernel, which stream order places after
// every finish block, so no block can miss it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/expert_kernels.h"

namespace hm::cuda {

struct DecodeStageArgs {
  const int32_t* ids = nullptr;      // device [n_ids]
  const float* w = nullptr;          // device [n_ids]
  const uint16_t* x = nullptr;       // device bf16 [n_x], 16-byte aligned
  const uint16_t* hints = nullptr;   // device: next-layer hints, copied as raw 16-bit units
  int n_ids = 0, n_hint_halves = 0;  // (ids or fp32 / bf16 logits: the planner decodes them)
  int64_t n_x = 0;                   // T * H, a multiple of 8
  int32_t* ids_h = nullptr;          // device views of mapped host memory, same sizes
  float* w_h = nullptr;
  uint16_t* x_h = nullptr;  // 16-byte aligned
  uint16_t* hints_h = nullptr;
  float* acc = nullptr;       // device fp32 [n_x]: zeroed
  uint32_t* done = nullptr;   // mapped word: reset to 0
  uint32_t* ready = nullptr;  // mapped word: set to ready_value after the inputs
  uint32_t ready_value = 0;
  uint32_t* go = nullptr;  // mapped word: waited for (!= 0), then reset to 0
  // The plan: mapped source (host-written) -> device copy that launch_decode reads.
  const int32_t* plan_token_ptr_h = nullptr;   // [n_tokens + 1]
  const int32_t* plan_pair_token_h = nullptr;  // [max_pairs]
  const int32_t* plan_pair_slot_h = nullptr;
  const float* plan_pair_weight_h = nullptr;
  int32_t* plan_token_ptr = nullptr;
  int32_t* plan_pair_token = nullptr;
  int32_t* plan_pair_slot = nullptr;
  float* plan_pair_weight = nullptr;
  int n_tokens = 0, max_pairs = 0;
};
void launch_decode_stage(const DecodeStageArgs& a, cudaStream_t stream);

struct DecodeFinishArgs {
  const float* acc = nullptr;      // device fp32 [n]
  const float* partial = nullptr;  // device view of mapped host fp32 [n]
  void* out = nullptr;             // device [n] of out_dtype
  OutDtype out_dtype = OutDtype::kFloat32;
  int64_t n = 0;
  uint32_t* kdone = nullptr;       // mapped word: set to 1 at the start
  const uint32_t* done = nullptr;  // mapped word: waited for (!= 0)
  bool vec4 = false;  // set by launch_decode_finish: 16-byte loads (n % 4 == 0, aligned)
};
void launch_decode_finish(const DecodeFinishArgs& a, cudaStream_t stream);

}  // namespace hm::cuda
