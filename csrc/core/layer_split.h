// [NOTE] The per-layer CPU / GPU split (DESIGN.md section 5): given the selected experts of one
// layer and the state of three queues (CPU, GPU, copy engine), choose for each expert CPU, GPU (a
// hit, or an in-flight copy the GPU waits for) or fetch+GPU, minimising the layer's finish time
// max(cpu_finish, gpu_finish).
//
// Model (the objective evaluate() computes; split() minimises exactly it):
//   CPU: runs its experts back to back from max(now, cpu_free).
//   copy engine: fetches in Johnson's order for a two-stage flow shop (copy, then GPU: items with
//     t_copy <= t_gpu first by ascending t_copy, then the rest by descending t_gpu), from
//     max(now, copy_free), one after another; a fetch's bytes are ready when its copy ends.
//   GPU: one launch per layer (gpu_layer_overhead once if it has any work), experts in order of
//     readiness (optimal for one machine with release times), from max(now, gpu_free).
// Search: free items with identical costs are interchangeable, so split() enumerates how many of
// each group go to the GPU: exact whenever the product of (group size + 1) is <= kMaxCombos (always
// for <= 12 free items; decode's identical misses give k + 1 cases). Beyond that (prefill with
// many distinct token counts) it tries every prefix of the items sorted by t_cpu / (t_copy +
// t_gpu), which includes "upload the whole layer" and "all on the CPU". Before searching, free
// items whose GPU option alone ends after the all-CPU finish are dropped (exact: see split()).
#pragma once

#include <cstdint>
#include <vector>

namespace hm {

enum class Where : uint8_t { kCpu = 0, kGpu = 1, kFetch = 2 };
enum class Choice : uint8_t { kFree = 0, kForceCpu = 1, kForceGpu = 2 };

struct SplitItem {
  double t_cpu = 0, t_gpu = 0, t_copy = 0;  // us
  double ready = 0;         // no copy needed: time its bytes are in VRAM (now for a hit)
  bool needs_copy = false;  // the GPU option needs a copy first (a miss)
  Choice choice = Choice::kFree;
  Where where = Where::kCpu;  // output (input to evaluate)
  double fetch_ready = 0;     // output: when its copy completes (fetches only)
};

struct Queues {
  double now = 0;                                    // when the layer's plan is made, us
  double cpu_free = 0, gpu_free = 0, copy_free = 0;  // when each queue drains, us
};

struct SplitResult {
  double finish = 0, cpu_finish = 0, gpu_finish = 0;
  double copy_free = 0;  // copy queue drains at this time after the layer's fetches
  double cpu_busy = 0, gpu_busy = 0, copy_busy = 0;  // work added, us
  int n_cpu = 0, n_gpu = 0, n_fetch = 0;
};

class LayerSplitter {
 public:
  static constexpr int kMaxCombos = 4096;

  // Sets items[i].where (and fetch_ready) for the minimal finish time; forced items keep their
  // choice.
  SplitResult split(SplitItem* items, int n, const Queues& q, double gpu_layer_overhead);
  // Finish time of the assignment in items[i].where (fetch_ready is written).
  SplitResult evaluate(SplitItem* items, int n, const Queues& q, double gpu_layer_overhead);

 private:
  void prepare(const SplitItem* items, int n);
  SplitResult eval(SplitItem* items, int n, const Queues& q, double ovh);
  std::vector<int> copy_order_, fixed_order_, free_, group_start_, group_count_, best_;
  std::vector<uint8_t> best_where_;
};

}  // namespace hm
