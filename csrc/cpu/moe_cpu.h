// [NOTE] One MoE layer's experts on the CPU: the C++ API the runtime calls.
//
// For every assignment (token t, expert e, router weight w):
//     out[t] += w * down_e( silu(gate_e(x_t)) * up_e(x_t) )
// with weights in BF16 or Q8_0 (core/weight_format.h), fp32 accumulation, x and out fp32.
//
// Work split (so that every core streams DRAM even at T = 1 with 8 experts):
//   phase 0: per expert group (tokens sharing an expert), pack the tokens' activations once
//            (bf16 / Q8 blocks / AMX VNNI order, per ISA; see kernel_ops.h);
//   phase 1: items = (expert, 32 rows of I): gate and up rows for all the group's tokens, then
//            h = silu(gate) * up, packed for the down projection;  [barrier]
//   phase 2: items = 64 rows of H (16, one AMX tile, when a group is AMX-sized): the down rows of
//            every expert for those output rows, scaled by the router weight and added to out;
//            each item owns its rows of out, so no atomics.
//   (HYBRID_MOE_ITEM_ROWS=R1,R2 changes the 32 / 64-or-16 for measurements.)
//   Dataflow variant of phase 2 (HYBRID_MOE_DATAFLOW=auto|0|1; auto: two or more expert groups,
//   none AMX-sized, i.e. decode): items = (expert group, 64 rows of H), each waiting only for its
//   own expert's phase 1, so no core idles at the phase-1 barrier while others finish; an item
//   writes its rows to a per-assignment partial buffer, and the item that completes a row block
//   adds the groups' partials to out in group order (the same sums as above, so the same bits).
// A worker that takes an item of phase 1 or 2 before the previous phase has ended prefetches the
// item's weight rows into L2 while it waits (Job::warm), so the barriers' idle time streams DRAM.
// Scratch (packed activations, 2 x T x k x (H + I) bytes for bf16) comes from a small reused cache.
//
// Non-blocking use (runtime host function): `auto h = submit_moe_layer(pool, args);` ... later
// `h.wait();` (joins, rethrows). x, out and the expert bytes are borrowed until wait() returns;
// the assignment list and the expert pointer array are copied at submit.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "core/weight_format.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"

namespace hm::cpu {

struct ExpertAssignment {
  int32_t token;   // row of x / out, in [0, tokens)
  int32_t expert;  // index into experts[], in [0, n_experts)
  float weight;    // router weight (finite)
};

struct MoeLayerArgs {
  ExpertLayout layout;                      // make_expert_layout(format, H, I)
  const uint8_t* const* experts = nullptr;  // [n_experts] base of each expert's byte range
  int64_t n_experts = 0;
  const float* x = nullptr;  // [tokens, H] fp32, row-major, contiguous
  int64_t tokens = 0;
  const ExpertAssignment* assignments = nullptr;  // [n_assignments], any order, any repeats
  int64_t n_assignments = 0;
  float* out = nullptr;  // [tokens, H] fp32, accumulated into
};

// Validates args (hm::ValueError naming the bad field), then queues the layer on the pool.
JobHandle submit_moe_layer(ThreadPool& pool, const MoeLayerArgs& args);

// The row packing a host expert store should use for format f on this machine
// (HYBRID_MOE_Q8_ROWS16): auto (default) = q8_rows16 for Q8_0 when the CPU variant in use
// (current_isa()) is a SIMD one (avx2, avx512, amx: their group kernels measured 1.03-1.6x the
// GGUF-row code at T = 1-64, bench/RESULTS.md session 8), gguf for the generic code; 1 =
// q8_rows16 for every Q8_0 store; 0 = gguf. Read once; a malformed value raises hm::ValueError.
RowPacking host_row_packing(WeightFormat f);
JobHandle submit_moe_layer(ThreadPool& pool, const MoeLayerArgs& args, Isa isa);
// Warming: pulls experts' weight bytes into the L2 of the workers (software prefetch, 64 KiB
// items: gate and up rows of each expert in the order phase 1 reads them, then down) while the
// pool would idle, ahead of a call expected to compute them: the GPU runtime warms the next
// layer's predicted CPU experts between layers. Jobs run in order, so a warm job queued ahead of
// a real one delays it: cancel() first; the items then stop within 4 KiB of prefetching.
class ExpertWarm {
 public:
  ExpertWarm() = default;
  ExpertWarm(JobHandle job, std::shared_ptr<std::atomic<bool>> stop)
      : job_(std::move(job)), stop_(std::move(stop)) {}
  bool valid() const { return job_.valid(); }
  bool done() const { return job_.done(); }
  void cancel() {
    if (stop_) stop_->store(true, std::memory_order_relaxed);
  }
  void wait() {
    if (job_.valid()) job_.wait();
  }

 private:
  JobHandle job_;
  std::shared_ptr<std::atomic<bool>> stop_;
};
// experts: [n_experts] expert bases (layout's byte ranges), each non-null; n_experts >= 0.
ExpertWarm submit_expert_warm(ThreadPool& pool, const ExpertLayout& layout,
                              const uint8_t* const* experts, int64_t n_experts);

// Blocking form: submit, then (caller_helps) compute items on the calling thread beside the
// pool's workers (see caller_pool in thread_pool.h), then wait.
void run_moe_layer(ThreadPool& pool, const MoeLayerArgs& args, bool caller_helps = false);
void run_moe_layer(ThreadPool& pool, const MoeLayerArgs& args, Isa isa, bool caller_helps = false);

}  // namespace hm::cpu
