// The synthetic router (core/synthetic_route.h): determinism, valid rows, keep_prob extremes, and
// the sampling law against the popularity it was given (no hot set, no keeping).
#include <cmath>
#include <set>
#include <vector>

#include "core/check.h"
#include "core/synthetic_route.h"
#include "hm_test.h"

namespace {

struct Run {
  std::vector<int32_t> ids;
  std::vector<float> w;
};

Run route(const hm::traces::SyntheticRouteParams& p, int64_t n, uint64_t seed) {
  Run r;
  r.ids.resize(n * p.n_layer * p.top_k);
  r.w.resize(r.ids.size());
  hm::traces::synthetic_route(p, n, seed, r.ids.data(), r.w.data());
  return r;
}

}  // namespace

HM_TEST(trace_synthetic_rows_valid_and_deterministic) {
  const int L = 3, E = 20, k = 4;
  std::vector<float> pop(L * E), hot{0.5f, 1.5f, 2.5f}, keep{0.f, 0.4f, 0.8f};
  for (int i = 0; i < L * E; ++i) pop[i] = 1.f + static_cast<float>(i % 7);
  pop[5] = 0.f;  // a dead expert in layer 0
  hm::traces::SyntheticRouteParams p{L, E, k, pop.data(), hot.data(), keep.data(), 0.1f, 0.95f, 2};
  const Run a = route(p, 300, 11), b = route(p, 300, 11), c = route(p, 300, 12);
  HM_EXPECT(a.ids == b.ids && a.w == b.w);
  HM_EXPECT(a.ids != c.ids);
  for (int64_t row = 0; row < 300 * L; ++row) {
    std::set<int32_t> s(a.ids.begin() + row * k, a.ids.begin() + (row + 1) * k);
    HM_EXPECT(static_cast<int>(s.size()) == k);
    float sum = 0.f;
    for (int j = 0; j < k; ++j) {
      const int32_t e = a.ids[row * k + j];
      HM_EXPECT(e >= 0 && e < E);
      if (row % L == 0) HM_EXPECT(e != 5);
      sum += a.w[row * k + j];
      if (j) HM_EXPECT(a.w[row * k + j] <= a.w[row * k + j - 1]);
    }
    HM_EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

HM_TEST(trace_synthetic_keep_one_repeats_the_first_token) {
  const int L = 1, E = 10, k = 3;
  std::vector<float> pop(E, 1.f), hot{1.f}, keep{1.f};
  hm::traces::SyntheticRouteParams p{L, E, k, pop.data(), hot.data(), keep.data(), 0.f, 0.9f, 1};
  const Run a = route(p, 50, 3);
  const std::set<int32_t> first(a.ids.begin(), a.ids.begin() + k);
  for (int t = 1; t < 50; ++t)
    HM_EXPECT(std::set<int32_t>(a.ids.begin() + t * k, a.ids.begin() + (t + 1) * k) == first);
}

HM_TEST(trace_synthetic_law_matches_popularity) {
  // No hot set, no keeping, k = 1: each token is one independent draw from the popularity.
  const int L = 1, E = 6, k = 1;
  std::vector<float> pop{1.f, 2.f, 3.f, 4.f, 0.5f, 9.5f}, hot{0.f}, keep{0.f};
  hm::traces::SyntheticRouteParams p{L, E, k, pop.data(), hot.data(), keep.data(), 0.f, 0.5f, 1};
  const int64_t n = 200000;
  const Run a = route(p, n, 5);
  std::vector<double> count(E, 0.0);
  for (int32_t e : a.ids) count[e] += 1;
  for (int e = 0; e < E; ++e) {
    const double want = pop[e] / 20.0;
    // 5 standard errors of a binomial share over n draws
    HM_EXPECT_NEAR(count[e] / n, want, 5 * std::sqrt(want * (1 - want) / n));
  }
}

HM_TEST(trace_synthetic_bad_params) {
  std::vector<float> pop(4, 1.f), hot{1.f}, keep{0.5f};
  std::vector<int32_t> ids(8);
  std::vector<float> w(8);
  hm::traces::SyntheticRouteParams p{1, 4, 2, pop.data(), hot.data(), keep.data(), 0.f, 0.9f, 1};
  p.drift = 1.f;
  HM_EXPECT_THROWS(hm::traces::synthetic_route(p, 4, 0, ids.data(), w.data()), hm::ValueError);
  p.drift = 0.9f;
  pop[0] = pop[1] = pop[2] = 0.f;  // one live expert < top_k
  HM_EXPECT_THROWS(hm::traces::synthetic_route(p, 4, 0, ids.data(), w.data()), hm::ValueError);
  pop[0] = pop[1] = pop[2] = 1.f;
  keep[0] = 1.5f;
  HM_EXPECT_THROWS(hm::traces::synthetic_route(p, 4, 0, ids.data(), w.data()), hm::ValueError);
}
