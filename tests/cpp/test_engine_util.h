// Helpers shared by the decision engine's C++ tests: a profile with round numbers and a tiny
// driver that feeds one expert per step to a policy + cache with plain demand admission.
#pragma once

#include <vector>

#include "core/cost_model.h"
#include "core/expert_cache.h"
#include "core/policy.h"

namespace hm::test {

inline HardwareProfile round_profile() {
  HardwareProfile p;
  p.name = "test";
  p.dram_read_gbps = 50;
  p.cpu_overhead_us = 4;
  p.vram_gbps = 1000;
  p.gpu_overhead_us = 1;
  p.gpu_layer_overhead_us = 5;
  p.h2d_gbps = 20;
  p.copy_latency_us = 10;
  p.layer_fixed_us = 30;
  p.bf16 = {0.5, 2.0, 100.0};
  p.q8_0 = {0.5, 4.0, 100.0};
  return p;
}

// Feeds `seq` (one expert of layer 0 per step) through `policy` and a cache of `slots`: a hit
// refreshes the key; a miss takes a free slot or the policy's victim if the policy admits it.
// Returns the number of hits. next_use is filled for the oracle.
inline int run_sequence(Policy& policy, ExpertCache& cache, const std::vector<int>& seq) {
  int hits = 0;
  for (std::size_t t = 0; t < seq.size(); ++t) {
    Access a;
    a.layer = 0;
    a.expert = seq[t];
    a.weight = 1.0f;
    a.step = static_cast<int64_t>(t);
    a.tick = a.step;
    a.next_use = kNoNextUse;
    for (std::size_t u = t + 1; u < seq.size(); ++u)
      if (seq[u] == seq[t]) {
        a.next_use = static_cast<int64_t>(u);
        break;
      }
    policy.on_access(a);
    const int slot = cache.lookup(0, seq[t]);
    if (slot >= 0) {
      ++hits;
      cache.set_key(slot, policy.key(0, seq[t]));
      continue;
    }
    int s = cache.free_slot();
    const bool is_free = s >= 0;
    if (!is_free) s = cache.choose_victim(static_cast<double>(t));
    if (s < 0 || !policy.admit(cache, 0, seq[t], is_free ? -1 : s, a.step, 0.0)) continue;
    cache.begin_load(s, 0, seq[t], 0.0, policy.key(0, seq[t]));
  }
  return hits;
}

}  // namespace hm::test
