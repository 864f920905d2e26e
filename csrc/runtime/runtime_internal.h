// Internal to csrc/runtime: the per-layer context and the CUDA state of hm::runtime::Runtime,
// shared by runtime.cpp (engine, CPU path) and runtime_gpu.cpp (decode / prefill on the GPU).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/runtime.h"
#if HYBRID_MOE_WITH_CUDA
#include "cuda/device_slab.h"
#include "cuda/expert_kernels.h"
#include "cuda/mover.h"
#include "cuda/pinned_store.h"
#endif

namespace hm::runtime {

using Clock = std::chrono::steady_clock;

inline double us_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

struct Runtime::LayerCtx {
  int layer = 0;
  bool registered = false;
  std::unique_ptr<uint8_t, FreeDeleter> host;  // staging, or the CPU-only store [E * stride]
  std::vector<const uint8_t*> expert_ptrs;     // [E] host bytes of each expert (CPU kernel)
  int64_t steps = 0;

  // Planning state (under Runtime::mu_).
  LayerPlan plan;
  bool plan_live = false;
  std::vector<Selected> selected;
  std::vector<int> sel_index;             // [E] index into selected, -1
  std::vector<int> gpu_slot_of;           // [E] slot computing the expert this step, -1: CPU
  std::vector<int> hints;                 // distinct predicted experts of layer + 1
  std::vector<const uint8_t*> warm_ptrs;  // planner: this layer's experts being prewarmed
  std::vector<uint8_t> predicted;         // [E] this layer's experts predicted by layer - 1
  bool have_predicted = false;
  PlanOut out;
  uint64_t plan_id = 0;
  bool acquired = false;
  bool copies_pending = false;  // decode: plan.copies not yet handed to the mover (under mu_)
  LayerStats stats;

  // CPU job of the plan in flight.
  cpu::JobHandle job;
  Clock::time_point t_submit;

  // Decode buffers (GPU runtime): page-locked host memory and mapped plan memory.
  int t_max = 0;
  void* pinned = nullptr;
  void* mapped = nullptr;
  int32_t* ids_h = nullptr;       // [t_max * k]
  float* w_h = nullptr;           // [t_max * k]
  int32_t* hints_h = nullptr;     // [t_max * max(k, E)] 32-bit words: ids, or logits (hint_topk.h)
  std::vector<int32_t> hint_ids;  // [t_max * k] top k of hint logits (planner)
  uint16_t* x_h = nullptr;        // bf16 [t_max * H]
  int32_t* d_ids_h = nullptr;     // device views of the four above (fused stage kernel)
  float* d_w_h = nullptr;
  int32_t* d_hints_h = nullptr;
  uint16_t* d_x_h = nullptr;
  float* partial_h = nullptr;            // fp32 [t_max * H], the CPU's share (mapped memory)
  const float* d_partial_map = nullptr;  // its device view (the add kernel reads it over PCIe)
  std::vector<float> x32;                // fp32 [t_max * H], x for the CPU kernel
  int32_t* map_token_ptr = nullptr;      // host views of the mapped plan: [t_max + 1]
  int32_t* map_pair_token = nullptr;     // [t_max * k]
  int32_t* map_pair_slot = nullptr;
  float* map_pair_weight = nullptr;
  const int32_t* d_token_ptr = nullptr;  // device views of the same
  const int32_t* d_pair_token = nullptr;
  const int32_t* d_pair_slot = nullptr;
  const float* d_pair_weight = nullptr;
  // Decode kernel timing (eager steps only; read lazily by a later forward of the layer).
  void* ev_start = nullptr;
  void* ev_stop = nullptr;
  bool timing_pending = false;
  std::atomic<bool> timing_armed{false};
  int timed_gpu_experts = 0;
  int64_t timed_gpu_pairs = 0;
  // Doorbells (doorbell decode): one word per cache line in mapped host memory, host views
  // (volatile: written by the GPU) and device views. ready: GPU -> planner, the Launch id once
  // the inputs are staged; go: planner -> GPU, 1 once the plan is written; kdone: GPU -> planner,
  // 1 once the decode kernel finished (its slots may be released); done: planner -> GPU, 1 once
  // the CPU's partial sums are written. Each side resets the words it waits for.
  volatile uint32_t* bell_ready = nullptr;
  volatile uint32_t* bell_go = nullptr;
  volatile uint32_t* bell_kdone = nullptr;
  volatile uint32_t* bell_done = nullptr;
  void* d_bell_ready = nullptr;
  void* d_bell_go = nullptr;
  void* d_bell_kdone = nullptr;
  void* d_bell_done = nullptr;
  bool kernel_pending = false;  // planner: go written, kdone not yet seen
  bool cpu_pending = false;     // planner: CPU job running, done not yet written
  // Fixed host-function arguments per (T, n_hints, hint kind): stable pointers for captured graphs.
  std::map<std::tuple<int, int, int>, std::unique_ptr<Launch>> launches;
};

struct Runtime::Gpu {
#if HYBRID_MOE_WITH_CUDA
  struct Completion {
    cuda::FetchCompletion c;
    double t_us = 0;
  };
  std::shared_ptr<cuda::PinnedExpertStore> store;  // all experts, (layer, expert) -> layer * E + e
  std::shared_ptr<cuda::DeviceSlab> slab;          // null when n_slots == 0
  std::unique_ptr<cuda::Mover> mover;
  std::unique_ptr<cuda::PrefillRunner> prefill;
  float* d_workspace = nullptr;   // fp32 [decode_max * k, I]: decode phase-1 activations
  float* d_partial = nullptr;     // fp32 [d_partial_cap]: the CPU's share after H2D (prefill)
  bool partials_by_copy = false;  // HM_DECODE_PARTIALS=copy: decode H2Ds them too (diagnostics)
  float* d_acc = nullptr;         // fp32 [t_max, H]: the GPU experts' sum (fused hand-off)
  bool fused = false;             // doorbell decode with the hand-off kernels (decode_handoff.h)
  void* d_plan = nullptr;         // fused: device copy of the layer's plan, views below
  int32_t* d_plan_token_ptr = nullptr;
  int32_t* d_plan_pair_token = nullptr;
  int32_t* d_plan_pair_slot = nullptr;
  float* d_plan_pair_weight = nullptr;
  std::size_t d_partial_cap = 0;

  std::mutex cq_mu;  // mover completions, pushed by its callback (never takes Runtime::mu_)
  std::condition_variable cq_cv;
  std::vector<Completion> cq, cq_local;
  std::vector<double> request_us;  // [n_slots] when the slot's last copy was requested
  double last_completion_us = 0;

  // Doorbell decode (runtime_planner.cpp).
  bool doorbell = false;
  // The planner computes CPU items itself between submitting a layer's CPU job and its end (it
  // would only poll meanwhile): HYBRID_MOE_PLANNER_HELPS=0 turns this off (A/B runs).
  bool planner_helps = true;
  // HYBRID_MOE_CPU_PREWARM=1 (opt-in): when a layer's CPU experts finish, the idle pool
  // prefetches the next layer's predicted CPU experts (hinted, not on the GPU) into its caches
  // until that layer's job comes (cpu::ExpertWarm). Off by default: no gain on the lent H200
  // (bench/RESULTS.md, session 7: value 0.94-1.01x, static 1.01-1.04x in same-call pairs).
  bool prewarm = false;
  cpu::ExpertWarm warm;               // the pending warm job (planner thread only)
  std::string decode_sync_why;        // why host functions are used instead (empty: doorbell)
  void* bells = nullptr;              // mapped block: 4 words per layer, 64 bytes apart
  std::vector<Launch*> launch_by_id;  // [id - 1]; fixed capacity (no reallocation while read)
  std::atomic<uint32_t> n_launch_ids{0};
  std::thread planner;
  std::atomic<bool> planner_stop{false};
  std::atomic<bool> planner_pause{false};
  std::atomic<bool> planner_parked{false};

  // Prefill scratch (host-driven, one layer at a time).
  std::vector<int32_t> ids, hints;
  std::vector<float> w, x32, partial;
  std::vector<uint16_t> xb;
#endif
};

}  // namespace hm::runtime
