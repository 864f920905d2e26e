// [NOTE] Trace-driven simulator (DESIGN.md section 2: "the simulator only replaces the clock and
// the workers"). It replays a routing trace through the same ExpertCache, Policy, CostModel and
// Scheduler the runtime uses. Per layer of every step: the layer's non-expert work takes
// layer_fixed_us (GPU), then the scheduler plans the experts at `now` with the CPU and GPU idle and
// the copy engine busy until its queue (prefetches and admissions of earlier layers) drains; the
// layer ends at the plan's finish time, and its pins are released. Copies complete on the clock
// (the cache's ready_at), so a prefetch that is still in flight when its layer comes is waited for
// or bypassed by the split. Decode latency = a step's span; tokens/s = decode tokens / decode time.
// The hot loop allocates nothing: every buffer is sized before the first step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/cost_model.h"
#include "core/policy.h"
#include "core/weight_format.h"

namespace hm {

// A routing trace as flat arrays (the layout of python's RouteTrace; not owned).
struct TraceView {
  int n_layer = 0, n_expert = 0, top_k = 0;
  int64_t n_tokens = 0, n_steps = 0;
  const int32_t* ids = nullptr;           // [n_tokens, n_layer, top_k]
  const float* weights = nullptr;         // [n_tokens, n_layer, top_k]
  const int64_t* step_offsets = nullptr;  // [n_steps + 1]
  const int8_t* phase = nullptr;          // [n_steps], 0 prefill, 1 decode
  const uint8_t* computed = nullptr;  // [n_tokens, n_layer] 0 = skipped by the source; null = all
  void validate() const;              // shapes and ranges; HM_CHECK names the first bad one
};

struct SimConfig {
  std::string policy = "value";
  int n_slots = 0;                  // cache budget in expert slots (the global pool)
  double predictor_accuracy = 0.8;  // chance each next-layer hint is a true expert (value only)
  uint64_t seed = 0;                // predictor's random errors
  ValueParams value;
  // static's frequency profile, [n_layer * n_expert] use counts (any non-negative scale). Empty:
  // counted from the trace being replayed (an optimistic static: it knows the run it is scored
  // on); pass a profile from other prompts for KTransformers' real setting.
  std::vector<double> static_profile;
  // With a static_profile: every caching policy starts from static's placement (warm start,
  // Policy::warm_start) instead of an empty cache.
  bool warm_start = false;
  // Decode steps as the live runtime runs them (PlanInput::decode: misses on the CPU, copies only
  // for later steps). false: the split may fetch a miss and compute it on the GPU in the same step.
  bool runtime_decode = true;
};

struct SimLayerStats {
  int64_t selections = 0, hits = 0, in_flight = 0;
  double time_us = 0;  // sum over steps of the layer's span (fixed part + experts)
};

struct SimResult {
  std::string policy;
  int n_slots = 0;
  int64_t layer_steps = 0;
  int64_t decode_steps = 0, decode_tokens = 0, prefill_steps = 0, prefill_tokens = 0;
  double decode_time_us = 0, prefill_time_us = 0;
  std::vector<double> step_latency_us;  // per decode step
  double latency_mean_us = 0, latency_p50_us = 0, latency_p99_us = 0;
  double tokens_per_s = 0;  // decode tokens / decode time
  int64_t selections = 0, hits = 0,
          in_flight = 0;  // distinct (layer, expert) per step; decode only
  double hit_rate = 0;    // (hits + in_flight) / selections, decode steps
  int64_t demand_copies = 0, prefetch_copies = 0, admit_copies = 0, staging_copies = 0;
  double copy_bytes = 0;            // all copies, all steps
  double copy_bytes_per_token = 0;  // decode steps' copies / decode tokens
  double cpu_busy_us = 0, gpu_busy_us = 0, copy_busy_us = 0;  // expert work, all steps
  double cpu_busy = 0, gpu_busy = 0, copy_busy = 0;           // fractions of total time
  int64_t cpu_experts = 0, gpu_experts = 0;                   // decode placements
  std::vector<SimLayerStats> layers;
};

SimResult simulate(const TraceView& trace, const HardwareProfile& profile,
                   const ExpertLayout& layout, const SimConfig& config);

}  // namespace hm
