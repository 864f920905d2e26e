// [NOTE] Expert-cache hit counting over one layer's routing sequence (issue 3, traces).
//
// Input: the selections of ONE layer over a run of steps, in CSR form:
//   ids[offsets[s] .. offsets[s+1])  expert ids selected in step s (every (token, slot) selection
//   of that step, duplicates allowed when several tokens of the step pick the same expert).
// One layer owns its own cache of `capacity` experts, empty at the start.
//
// How hits are counted (all policies): a selection in step s is a HIT when its expert was resident
// before step s began, otherwise a MISS. Both are counted per selection, so a step of one token at
// top-k contributes k selections. Missed experts are loaded (or, with bypass, maybe not) before the
// step computes; loads inside a step never turn a later selection of the same step into a hit.
//
// Policies:
//   kLru          every distinct expert of step s must be resident after the step; residents are
//                 touched in selection order (the last selection is the most recent); on a miss
//                 with a full cache the least recently used resident that step s does not use is
//                 evicted. Needs capacity >= distinct experts of every step.
//   kBelady       same residency rule as kLru; the victim is the resident not used by step s whose
//                 next use (first later step selecting it) is farthest, never-again counting as
//                 infinitely far (ties: lowest expert id). Optimal under that rule when every step
//                 selects each expert at most once (one-token decode steps); with duplicates in a
//                 step (several tokens), hits weigh by multiplicity and it is the usual heuristic.
//   kBeladyBypass a missed expert need not be cached (it can run where it lies, e.g. on the CPU):
//                 it is inserted only when a free slot exists or when some resident not used by
//                 step s is next used later than it (that resident is evicted). Optimal caching
//                 with optional insertion (same at-most-once condition); the cache may be < k.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hm::traces {

enum class CachePolicy : int { kLru = 0, kBelady = 1, kBeladyBypass = 2 };

const char* policy_name(CachePolicy p);
CachePolicy parse_policy(const std::string& name);  // "lru" | "belady" | "belady_bypass"

struct CacheHits {
  int64_t hits = 0;
  int64_t selections = 0;
  double rate() const { return selections ? static_cast<double>(hits) / selections : 0.0; }
};

// ids: [offsets[n_steps]] expert ids in [0, n_expert); offsets: [n_steps + 1], non-decreasing,
// offsets[0] == 0. Throws hm::ValueError for an id out of range, bad offsets, or (kLru, kBelady)
// a step with more distinct experts than `capacity`.
CacheHits count_cache_hits(const int32_t* ids, const int64_t* offsets, int64_t n_steps,
                           int n_expert, int capacity, CachePolicy policy);

// The same for every layer of a trace: ids [n_tokens, n_layer, top_k] (row-major, a RouteTrace's
// ids restricted to the steps of interest), token_offsets [n_steps + 1] (tokens of step s are rows
// token_offsets[s] .. token_offsets[s+1]). Returns one CacheHits per layer, each layer with its
// own cache of `capacity` experts.
std::vector<CacheHits> count_layer_cache_hits(const int32_t* ids, int64_t n_tokens, int n_layer,
                                              int top_k, const int64_t* token_offsets,
                                              int64_t n_steps, int n_expert, int capacity,
                                              CachePolicy policy);

}  // namespace hm::traces
