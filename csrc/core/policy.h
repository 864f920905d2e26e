// [NOTE] Cache policies (DESIGN.md section 5), all selectable by name (make_policy):
//   cpu        no cache: every expert on the CPU (KTransformers' default).
//   static     a fixed GPU set chosen once from a frequency profile, the most used (layer, expert)
//              pairs of the whole pool (KTransformers' frequency placement); never changes.
//   lru        misses computed on the CPU; copied into the cache in the background when the copy
//              engine has time; evicts the least recently used.
//   lfu        as lru, evicting the least frequently used (ties: least recent).
//   lru-fetch  every miss copied, then computed on the GPU (mixtral-offloading style); LRU
//   eviction. value      ours: see policy_value.cpp. oracle     Belady: evicts the expert used
//   again farthest in the future and admits a miss only
//              if it is used again before the victim (future known: simulator only).
// A policy only ranks and admits; the Scheduler decides where each expert runs and issues copies,
// and the ExpertCache holds the state. Eviction keys must keep their order as time passes (see
// expert_cache.h), so a victim is found in O(log slots).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/cost_model.h"
#include "core/expert_cache.h"

namespace hm {

// How the scheduler treats a miss under a policy.
enum class MissMode : int {
  kCpu = 0,       // computed on the CPU, never admitted (cpu, static)
  kCpuAdmit = 1,  // computed on the CPU, admitted by a background copy (lru, lfu)
  kFetch = 2,     // always copied, then computed on the GPU (lru-fetch)
  kSchedule =
      3,  // the scheduler picks CPU or fetch+GPU; the policy decides admission (value, oracle)
};

inline constexpr int64_t kNoNextUse = INT64_MAX;

// One selected expert of one layer-step, reported to the policy before the layer is planned.
struct Access {
  int layer = 0;
  int expert = 0;
  float weight = 0.f;             // router weight (summed over the step's tokens that chose it)
  int n_tokens = 1;               // tokens of the step that chose it
  int64_t step = 0;               // step index (decode token or prefill chunk)
  int64_t tick = 0;               // step * n_layer + layer: a global clock of layer visits
  int64_t next_use = kNoNextUse;  // step of its next use (simulator only; oracle)
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;
  virtual MissMode miss_mode() const = 0;
  virtual bool uses_cache() const { return true; }
  virtual bool wants_prefetch() const { return false; }  // takes next-layer predictor hints
  virtual bool needs_future() const { return false; }    // reads Access::next_use
  virtual void reset(int n_layer, int n_expert, int top_k, const CostModel& cost);
  virtual void on_access(const Access& a) = 0;
  // Eviction key of (layer, expert): the cache evicts the smallest.
  virtual double key(int layer, int expert) const = 0;
  // Whether (layer, expert) should replace the expert in victim_slot (-1: it takes a free slot).
  // imminent: probability it is used at its layer's very next visit (prefetch hints), else 0.
  virtual bool admit(const ExpertCache& cache, int layer, int expert, int victim_slot, int64_t step,
                     double imminent) const = 0;
  // Called once before a run with per (layer, expert) use counts [n_layer * n_expert]: static
  // places by them; lru, lfu, lru-fetch and value start from the same placement (a calibration
  // run's profile) and adapt from there. The default (cpu, oracle) ignores it.
  virtual void warm_start(ExpertCache& cache, const std::vector<double>& frequency) {}

 protected:
  // Fills the cache with the most used (layer, expert) pairs of `frequency` (never-used ones
  // stay free), each with the eviction key key_of(index, frequency). HM_CHECKs the size.
  template <typename KeyOf>
  void preload_top(ExpertCache& cache, const std::vector<double>& frequency, KeyOf key_of) const;

  int n_layer_ = 0, n_expert_ = 0, top_k_ = 1;
  double saved_us_ = 0, copy_us_ = 0;  // per decode use saved by a hit; one expert copy
  double stall_us_ = 0;                // decode critical path one copy costs (t_copy_stall)
};

template <typename KeyOf>
void Policy::preload_top(ExpertCache& cache, const std::vector<double>& freq, KeyOf key_of) const {
  const std::size_t n = static_cast<std::size_t>(n_layer_) * n_expert_;
  HM_CHECK(freq.size() == n, "policy '", name(),
           "': frequency profile must have n_layer * n_expert = ", n, " entries, got ",
           freq.size());
  std::vector<int> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return freq[a] > freq[b]; });
  for (int i = 0; i < cache.n_slots() && i < static_cast<int>(n); ++i) {
    if (freq[order[i]] <= 0) break;  // never used: leave the slot free
    cache.preload(order[i] / n_expert_, order[i] % n_expert_, key_of(order[i], freq[order[i]]));
  }
}

// Tunables of the value policy (defaults chosen on the dev trace and synthetic preset; see
// bench/RESULTS.md, "Decision engine").
struct ValueParams {
  // Swept on the dev trace and a 4,000-token synthetic trace (seed 1), 10% and 25% budgets:
  // short memories win (reuse is mostly within a few steps), and charging the copy on top of the
  // victim's value (copy_factor > 0) admitted too little, since copies only use idle PCIe time.
  double halflife_steps = 8.0;  // decay of the per-(layer, expert) score, in steps
  // Uses are predicted over this many future steps (the horizon while copies stall decode steps;
  // see horizon_lifetimes). 4 since 2026-11-29 (8 before): with stall_weight 0.75 it won a live
  // A/B on the H200 (bench/RESULTS.md, session 6, runs Q-S), chosen on the dev trace and the
  // synthetic preset with the cache warm-started from other prompts' heat.
  double horizon_steps = 4.0;
  double weight_mix = 0.0;   // 0: every use counts 1; 1: counts weight * top_k (0.5 before
                             // 2026-11-28: 0 is as good on both traces and skips a log2)
  double copy_factor = 0.0;  // admission needs value > victim's value + copy_factor * t_copy
  // Admission also charges the copy's stall on the decode path (CostModel::t_copy_stall, from the
  // profile's copy_stall_fraction; 0 in profiles without it): a copy that delays the step by
  // more than the uses it buys is not worth making. false: ignore it (the policy before).
  bool stall_aware = true;
  // The stall charged per admission is stall_weight * the profile's (physical) stall. 0.75 with
  // horizon_steps 4 since 2026-11-29: live on the H200 (48 layers, real trace and synthetic
  // preset, 10/25/50%, static and the warm start placed by other prompts' heat) it beat the
  // earlier 2 / 8 in 22 of 23 same-run pairs (median 1.12x; bf16 25% real, value / best baseline
  // median 1.32 vs 1.20) and was even with the warm start from the trace itself. 2 had been chosen
  // live in session 3, before the pool hand-off and next-layer logit hints shortened the step.
  double stall_weight = 0.75;
  // > 0: the horizon follows the cache instead: horizon_lifetimes * the measured mean time an
  // expert stays cached (n_slots / evictions per step, a moving average over ~8 steps;
  // horizon_steps until measured). The horizon weighs a resident's predicted uses against a
  // prefetch's imminent use, and the right weight is how long the newcomer will stay: ~10 steps at
  // a 10% budget, ~30 at 25% on the tuning traces, where fixed horizons 8 and 24-32 were best
  // respectively. 0: the fixed horizon_steps (the default before 2026-11-28). 0.75 chosen on the
  // dev trace and synthetic seeds 1-3 (0.7: 25% synthetic 1.15x instead of 1.18x; 0.85: 10%
  // synthetic closes 0.47 of the gap instead of 0.52).
  // Used only while copies do not stall decode steps (profile copy_stall_fraction 0); with a
  // stall the fixed horizon_steps applies (policy_value.cpp, reset).
  double horizon_lifetimes = 0.75;
};

std::unique_ptr<Policy> make_policy(const std::string& name, const ValueParams& vp = ValueParams());
const std::vector<std::string>& policy_names();

}  // namespace hm
