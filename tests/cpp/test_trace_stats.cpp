// Cache-hit counting (core/trace_stats.h): LRU on hand-made sequences, Belady and Belady-with-
// bypass against an exhaustive optimum over every residency choice on small random sequences.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/trace_stats.h"
#include "hm_test.h"

namespace {

using hm::traces::CachePolicy;
using hm::traces::count_cache_hits;

struct Seq {
  std::vector<int32_t> ids;
  std::vector<int64_t> off{0};
  void step(std::vector<int32_t> s) {
    ids.insert(ids.end(), s.begin(), s.end());
    off.push_back(static_cast<int64_t>(ids.size()));
  }
  int64_t n_steps() const { return static_cast<int64_t>(off.size()) - 1; }
};

int64_t hits(const Seq& q, int n_expert, int cap, CachePolicy p) {
  return count_cache_hits(q.ids.data(), q.off.data(), q.n_steps(), n_expert, cap, p).hits;
}

// Most hits any residency schedule reaches: dynamic programming over every cache content after
// every step (all subsets of residents plus the step's experts, of size <= cap). With
// `must_hold_step` the content after step s must contain all of step s's experts.
int64_t brute_force_max_hits(const Seq& q, int n_expert, int cap, bool must_hold_step) {
  const int n_masks = 1 << n_expert;
  const int64_t kNone = -1;
  std::vector<int64_t> best(n_masks, kNone), next(n_masks);
  best[0] = 0;
  for (int64_t s = 0; s < q.n_steps(); ++s) {
    std::fill(next.begin(), next.end(), kNone);
    int step_mask = 0;
    for (int64_t i = q.off[s]; i < q.off[s + 1]; ++i) step_mask |= 1 << q.ids[i];
    for (int m = 0; m < n_masks; ++m) {
      if (best[m] == kNone) continue;
      int64_t h = 0;
      for (int64_t i = q.off[s]; i < q.off[s + 1]; ++i) h += (m >> q.ids[i]) & 1;
      const int pool = m | step_mask;
      for (int after = pool;; after = (after - 1) & pool) {  // every subset of pool
        const bool fits = __builtin_popcount(after) <= cap;
        const bool holds = !must_hold_step || (after & step_mask) == step_mask;
        if (fits && holds) next[after] = std::max(next[after], best[m] + h);
        if (after == 0) break;
      }
    }
    best.swap(next);
  }
  return *std::max_element(best.begin(), best.end());
}

}  // namespace

HM_TEST(trace_stats_lru_hand_made) {
  Seq q;  // one selection per step, capacity 2
  for (int e : {0, 1, 0, 2, 1, 0}) q.step({e});
  // 0 m, 1 m, 0 h, 2 m (evicts 1), 1 m (evicts 0), 0 m (evicts 2)
  HM_EXPECT(hits(q, 4, 2, CachePolicy::kLru) == 1);
  // Belady: at "2" it evicts 0 (next used at step 5) rather than 1 (step 4): 0 h, 1 h.
  HM_EXPECT(hits(q, 4, 2, CachePolicy::kBelady) == 2);

  Seq r;  // several selections per step; a loaded expert is no hit for the rest of its step
  r.step({0, 1});
  r.step({1, 2});     // 1 h, 2 m evicts 0
  r.step({0, 0, 1});  // 0 m twice (LRU is 1, but step uses it: 2 is evicted), 1 h
  r.step({2});        // 2 m
  const auto h = count_cache_hits(r.ids.data(), r.off.data(), r.n_steps(), 3, 2, CachePolicy::kLru);
  HM_EXPECT(h.hits == 2);
  HM_EXPECT(h.selections == 8);
}

HM_TEST(trace_stats_belady_matches_exhaustive_optimum) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    const int n_expert = 3 + static_cast<int>(rng() % 4);          // 3..6
    const int k = 1 + static_cast<int>(rng() % 3);                 // 1..3 experts per step
    const int cap = 1 + static_cast<int>(rng() % (n_expert - 1));  // 1 .. n_expert-1
    const int steps = 4 + static_cast<int>(rng() % 9);
    Seq q;
    for (int s = 0; s < steps; ++s) {
      // One token per step (a decode step): k distinct experts. Belady is exactly optimal only
      // when a step selects each expert at most once (trace_stats.h).
      std::vector<int32_t> perm(n_expert);
      for (int e = 0; e < n_expert; ++e) perm[e] = e;
      std::shuffle(perm.begin(), perm.end(), rng);
      q.step(std::vector<int32_t>(perm.begin(), perm.begin() + k));
    }
    int max_distinct = 0;
    for (int64_t s = 0; s < q.n_steps(); ++s) {
      std::vector<int32_t> d(q.ids.begin() + q.off[s], q.ids.begin() + q.off[s + 1]);
      std::sort(d.begin(), d.end());
      max_distinct = std::max<int>(max_distinct, std::unique(d.begin(), d.end()) - d.begin());
    }
    const int64_t bypass = hits(q, n_expert, cap, CachePolicy::kBeladyBypass);
    HM_EXPECT(bypass == brute_force_max_hits(q, n_expert, cap, false));
    if (cap >= max_distinct) {
      const int64_t bel = hits(q, n_expert, cap, CachePolicy::kBelady);
      HM_EXPECT(bel == brute_force_max_hits(q, n_expert, cap, true));
      HM_EXPECT(hits(q, n_expert, cap, CachePolicy::kLru) <= bel);
      HM_EXPECT(bel <= bypass);
    } else {
      HM_EXPECT_THROWS(hits(q, n_expert, cap, CachePolicy::kBelady), hm::ValueError);
    }
  }
}

HM_TEST(trace_stats_bad_input) {
  Seq q;
  q.step({0, 5});
  HM_EXPECT_THROWS(hits(q, 4, 2, CachePolicy::kLru), hm::ValueError);  // id 5 >= n_expert 4
  Seq r;
  r.step({0, 1, 2});
  HM_EXPECT_THROWS(hits(r, 4, 2, CachePolicy::kLru), hm::ValueError);  // capacity < distinct
  HM_EXPECT(hits(r, 4, 2, CachePolicy::kBeladyBypass) == 0);           // bypass allows it
  HM_EXPECT_THROWS(hits(r, 4, 0, CachePolicy::kLru), hm::ValueError);
  HM_EXPECT_THROWS(hm::traces::parse_policy("fifo"), hm::ValueError);
}
