// [NOTE] Cache-hit counting for LRU and Belady over one layer's steps (see trace_stats.h for the
// exact counting rule). Sizes are small (n_expert <= a few hundred, capacity <= n_expert), so the
// structures are flat arrays: LRU is an intrusive doubly linked list over expert ids (O(1) touch),
// Belady keeps the residents in a dense array and scans it for the farthest next use on eviction
// (O(capacity) per eviction, cheaper than a tree for capacities of 8-64).
#include "core/trace_stats.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "core/check.h"

namespace hm::traces {

namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

void check_inputs(const int32_t* ids, const int64_t* offsets, int64_t n_steps, int n_expert,
                  int capacity) {
  HM_CHECK(n_steps >= 0, "n_steps must be >= 0, got ", n_steps);
  HM_CHECK(n_expert >= 1, "n_expert must be >= 1, got ", n_expert);
  HM_CHECK(capacity >= 1, "capacity must be >= 1 expert, got ", capacity);
  HM_CHECK(offsets != nullptr, "offsets must not be null");
  HM_CHECK(offsets[0] == 0, "offsets[0] must be 0, got ", offsets[0]);
  for (int64_t s = 0; s < n_steps; ++s) {
    HM_CHECK(offsets[s + 1] >= offsets[s], "offsets must be non-decreasing, offsets[", s + 1,
             "]=", offsets[s + 1], " < offsets[", s, "]=", offsets[s]);
  }
  const int64_t n = offsets[n_steps];
  HM_CHECK(n == 0 || ids != nullptr, "ids must not be null");
  for (int64_t i = 0; i < n; ++i) {
    HM_CHECK(ids[i] >= 0 && ids[i] < n_expert, "expert id ids[", i, "]=", ids[i],
             " out of range [0, ", n_expert, ")");
  }
}

// Distinct experts of each step, in first-selection order, as CSR (dist, dist_off).
void distinct_per_step(const int32_t* ids, const int64_t* offsets, int64_t n_steps, int n_expert,
                       std::vector<int32_t>* dist, std::vector<int64_t>* dist_off) {
  std::vector<int64_t> seen(n_expert, -1);
  dist->clear();
  dist->reserve(static_cast<std::size_t>(offsets[n_steps]));
  dist_off->assign(1, 0);
  for (int64_t s = 0; s < n_steps; ++s) {
    for (int64_t i = offsets[s]; i < offsets[s + 1]; ++i) {
      if (seen[ids[i]] != s) {
        seen[ids[i]] = s;
        dist->push_back(ids[i]);
      }
    }
    dist_off->push_back(static_cast<int64_t>(dist->size()));
  }
}

// Hits of step s given the residency before the step.
int64_t step_hits(const int32_t* ids, const int64_t* offsets, int64_t s,
                  const std::vector<char>& resident) {
  int64_t h = 0;
  for (int64_t i = offsets[s]; i < offsets[s + 1]; ++i) h += resident[ids[i]] ? 1 : 0;
  return h;
}

CacheHits run_lru(const int32_t* ids, const int64_t* offsets, int64_t n_steps, int n_expert,
                  int capacity, const std::vector<int32_t>& dist,
                  const std::vector<int64_t>& dist_off) {
  // List node n_expert is the sentinel: next[head] = most recent, prev[head] = least recent.
  const int head = n_expert;
  std::vector<int> prev(n_expert + 1, head), next(n_expert + 1, head);
  std::vector<char> resident(n_expert, 0);
  std::vector<int64_t> in_step(n_expert, -1);
  auto unlink = [&](int e) {
    next[prev[e]] = next[e];
    prev[next[e]] = prev[e];
  };
  auto push_front = [&](int e) {
    next[e] = next[head];
    prev[e] = head;
    prev[next[head]] = e;
    next[head] = e;
  };
  int size = 0;
  CacheHits out;
  for (int64_t s = 0; s < n_steps; ++s) {
    out.hits += step_hits(ids, offsets, s, resident);
    out.selections += offsets[s + 1] - offsets[s];
    for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) in_step[dist[j]] = s;
    for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) {
      const int e = dist[j];
      if (resident[e]) {
        unlink(e);
      } else {
        if (size == capacity) {
          int victim = prev[head];  // least recent not used by this step
          while (victim != head && in_step[victim] == s) victim = prev[victim];
          unlink(victim);
          resident[victim] = 0;
          --size;
        }
        resident[e] = 1;
        ++size;
      }
      push_front(e);
    }
  }
  return out;
}

CacheHits run_belady(const int32_t* ids, const int64_t* offsets, int64_t n_steps, int n_expert,
                     int capacity, bool bypass, const std::vector<int32_t>& dist,
                     const std::vector<int64_t>& dist_off) {
  // next_use[j]: the first step after the step of dist[j] that selects dist[j] again.
  std::vector<int64_t> next_use(dist.size());
  {
    std::vector<int64_t> last(n_expert, kNever);
    for (int64_t s = n_steps - 1; s >= 0; --s) {
      for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) {
        next_use[j] = last[dist[j]];
        last[dist[j]] = s;
      }
    }
  }
  std::vector<char> resident(n_expert, 0);
  std::vector<int64_t> key(n_expert, kNever);  // next use of each resident
  std::vector<int64_t> in_step(n_expert, -1);
  std::vector<int> slots;  // resident expert ids, unordered
  slots.reserve(capacity);
  // Index in `slots` of the resident to evict: farthest next use among those step s may evict
  // (all residents when `any` is set), lowest id on ties; -1 when none.
  auto farthest = [&](int64_t s, bool any) {
    int best = -1;
    for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
      const int e = slots[i];
      if (!any && in_step[e] == s) continue;
      if (best < 0 || key[e] > key[slots[best]] || (key[e] == key[slots[best]] && e < slots[best]))
        best = i;
    }
    return best;
  };
  auto evict_at = [&](int i) {
    resident[slots[i]] = 0;
    slots[i] = slots.back();
    slots.pop_back();
  };
  CacheHits out;
  for (int64_t s = 0; s < n_steps; ++s) {
    out.hits += step_hits(ids, offsets, s, resident);
    out.selections += offsets[s + 1] - offsets[s];
    for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) in_step[dist[j]] = s;
    if (bypass) {
      // After step s the cache may hold any `capacity` of residents and this step's experts:
      // keep those used soonest. Hits first get their new keys, then each miss competes.
      for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j)
        if (resident[dist[j]]) key[dist[j]] = next_use[j];
      for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) {
        const int e = dist[j];
        if (resident[e]) continue;
        if (static_cast<int>(slots.size()) == capacity) {
          const int v = farthest(s, /*any=*/true);
          if (key[slots[v]] <= next_use[j]) continue;  // not worth caching: run it uncached
          evict_at(v);
        }
        resident[e] = 1;
        key[e] = next_use[j];
        slots.push_back(e);
      }
    } else {
      for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) {
        const int e = dist[j];
        if (!resident[e]) {
          if (static_cast<int>(slots.size()) == capacity) evict_at(farthest(s, /*any=*/false));
          resident[e] = 1;
          slots.push_back(e);
        }
      }
      for (int64_t j = dist_off[s]; j < dist_off[s + 1]; ++j) key[dist[j]] = next_use[j];
    }
  }
  return out;
}

}  // namespace

const char* policy_name(CachePolicy p) {
  switch (p) {
    case CachePolicy::kLru:
      return "lru";
    case CachePolicy::kBelady:
      return "belady";
    case CachePolicy::kBeladyBypass:
      return "belady_bypass";
  }
  return "?";
}

CachePolicy parse_policy(const std::string& name) {
  if (name == "lru") return CachePolicy::kLru;
  if (name == "belady") return CachePolicy::kBelady;
  if (name == "belady_bypass") return CachePolicy::kBeladyBypass;
  HM_CHECK(false, "unknown cache policy '", name, "': expected lru, belady or belady_bypass");
}

CacheHits count_cache_hits(const int32_t* ids, const int64_t* offsets, int64_t n_steps,
                           int n_expert, int capacity, CachePolicy policy) {
  check_inputs(ids, offsets, n_steps, n_expert, capacity);
  std::vector<int32_t> dist;
  std::vector<int64_t> dist_off;
  distinct_per_step(ids, offsets, n_steps, n_expert, &dist, &dist_off);
  if (policy != CachePolicy::kBeladyBypass) {
    for (int64_t s = 0; s < n_steps; ++s) {
      HM_CHECK(dist_off[s + 1] - dist_off[s] <= capacity, "capacity=", capacity,
               " is smaller than the ", dist_off[s + 1] - dist_off[s], " distinct experts of step ",
               s, ": ", policy_name(policy),
               " needs every expert of a step resident (use capacity >= k)");
    }
  }
  if (policy == CachePolicy::kLru)
    return run_lru(ids, offsets, n_steps, n_expert, capacity, dist, dist_off);
  return run_belady(ids, offsets, n_steps, n_expert, capacity, policy == CachePolicy::kBeladyBypass,
                    dist, dist_off);
}

std::vector<CacheHits> count_layer_cache_hits(const int32_t* ids, int64_t n_tokens, int n_layer,
                                              int top_k, const int64_t* token_offsets,
                                              int64_t n_steps, int n_expert, int capacity,
                                              CachePolicy policy) {
  HM_CHECK(n_layer >= 1 && top_k >= 1, "n_layer and top_k must be >= 1, got ", n_layer, ", ",
           top_k);
  HM_CHECK(n_steps >= 0 && token_offsets != nullptr, "token_offsets must hold n_steps + 1 entries");
  HM_CHECK(token_offsets[0] == 0 && token_offsets[n_steps] == n_tokens,
           "token_offsets must run from 0 to n_tokens=", n_tokens, ", got ", token_offsets[0],
           " .. ", token_offsets[n_steps]);
  std::vector<int64_t> offsets(static_cast<std::size_t>(n_steps) + 1);
  for (int64_t s = 0; s <= n_steps; ++s) offsets[s] = token_offsets[s] * top_k;
  std::vector<int32_t> layer_ids(static_cast<std::size_t>(n_tokens * top_k));
  std::vector<CacheHits> out(n_layer);
  for (int l = 0; l < n_layer; ++l) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int32_t* row = ids + (t * n_layer + l) * top_k;
      std::copy(row, row + top_k, layer_ids.begin() + t * top_k);
    }
    out[l] =
        count_cache_hits(layer_ids.data(), offsets.data(), n_steps, n_expert, capacity, policy);
  }
  return out;
}

}  // namespace hm::traces
