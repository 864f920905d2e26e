// [NOTE] The scheduler (DESIGN.md sections 3 and 5): one call per layer and step, shared by the
// simulator and the live runtime. plan_layer():
//   1. reports each selected expert to the policy (on_access) and refreshes resident keys;
//   2. classifies each: hit (resident: GPU), in flight (loading: GPU after its copy, or CPU),
//      miss (per the policy's MissMode: CPU, always fetch, or the scheduler's choice);
//   3. runs LayerSplitter for the minimal layer finish time given the CPU, GPU and copy queues;
//   4. emits copy requests in copy-engine order: the layer's own fetches (into a cache slot when
//      the policy admits the expert, else into a staging buffer outside the budget), then
//      prefetches of predicted next-layer experts, then background admissions of misses the CPU
//      computed; prefetches and admissions only while the copy engine would otherwise sit idle
//      before the layer ends (it never queues more than the layer's own length ahead); a
//      prefetch's imminent use counts only by the time it would still save at the next layer
//      (a copy ending after that layer's plan is waited for, or bypassed when the CPU is faster);
//   5. pins every slot the plan names; release() unpins them once the layer finished, so a
//      victim is never an expert in use or one still being copied.
// Residency (begin_load) changes here, between plans; the runtime's mover flips loading ->
// resident after the copy completes (ExpertCache::complete_load).
#pragma once

#include <cstdint>
#include <vector>

#include "core/cost_model.h"
#include "core/expert_cache.h"
#include "core/layer_split.h"
#include "core/policy.h"

namespace hm {

// One distinct expert selected by the layer's tokens in this step.
struct Selected {
  int expert = 0;
  int n_tokens = 1;               // tokens of the step that chose it
  float weight = 0.f;             // sum of their router weights
  int64_t next_use = kNoNextUse;  // step of its next use (simulator; oracle only)
};

enum class CopyKind : uint8_t { kDemand = 0, kPrefetch = 1, kAdmit = 2 };

struct CopyRequest {
  CopyKind kind = CopyKind::kDemand;
  int layer = 0, expert = 0;
  int slot = -1;  // cache slot; -1 = staging buffer (computed once, not cached)
  int victim_layer = -1, victim_expert = -1;  // evicted to make room, or -1
  double start = 0, ready = 0;                // us, on the plan's clock
};

struct PlannedExpert {
  int expert = 0, n_tokens = 1;
  float weight = 0.f;
  Where where = Where::kCpu;
  int slot = -1;  // GPU: slot it is computed from (-1 = staging); CPU: -1
  bool hit = false, in_flight = false;
};

struct LayerPlan {
  int layer = 0;
  int64_t step = 0;
  std::vector<PlannedExpert> experts;
  std::vector<CopyRequest> copies;
  std::vector<int> pinned;  // slots this plan pinned
  SplitResult timing;       // the split's finish times and busy work
  double copy_free = 0;     // copy engine drains at this time after all of the plan's copies
  int n_hit = 0, n_in_flight = 0, n_miss = 0;
  int n_demand = 0, n_prefetch = 0, n_admit = 0, n_staging = 0;
};

struct PlanInput {
  int layer = 0;
  int64_t step = 0;
  const Selected* selected = nullptr;  // [n_selected], distinct experts
  int n_selected = 0;
  Queues queues;
  const int* hints = nullptr;  // predicted experts of layer + 1 (prefetch candidates)
  int n_hints = 0;
  double hint_probability = 0;  // the predictor's accuracy: chance a hint is used
  // A decode step of the live runtime, whose stream cannot wait for a copy: a miss runs on the
  // CPU (never a demand fetch) and may be admitted for later steps (kFetch then acts like
  // kCpuAdmit: admit every miss; kSchedule admits by the policy's value). false: the split may
  // fetch misses to the GPU (prefill, where the runtime waits for the copies).
  bool decode = false;
};

class Scheduler {
 public:
  // The objects are shared with the caller and must outlive the scheduler. policy.reset() is
  // called.
  Scheduler(ExpertCache& cache, Policy& policy, const CostModel& cost, int top_k);

  void plan_layer(const PlanInput& in, LayerPlan& out);
  void release(LayerPlan& plan);

  ExpertCache& cache() { return cache_; }
  Policy& policy() { return policy_; }
  const CostModel& cost() const { return cost_; }

 private:
  int take_slot(double now, int layer, int expert, int64_t step, double imminent, CopyRequest& req);

  ExpertCache& cache_;
  Policy& policy_;
  const CostModel& cost_;
  LayerSplitter splitter_;
  std::vector<SplitItem> items_;
  std::vector<int> order_, hint_pins_;
};

}  // namespace hm
