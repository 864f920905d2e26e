// Simulator: conservation of counts and bytes on a random trace, cpu-policy baseline time, bad
// inputs.
#include <algorithm>
#include <random>

#include "core/simulator.h"
#include "hm_test.h"
#include "test_engine_util.h"

using namespace hm;

namespace {

struct RandomTrace {
  int L = 6, E = 16, K = 4;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<int64_t> offsets{0};
  std::vector<int8_t> phase;
  RandomTrace(int prefill_tokens, int decode_steps, uint32_t seed) {
    std::mt19937 rng(seed);
    auto add_token = [&] {
      for (int l = 0; l < L; ++l) {
        std::vector<int> pick;
        while (static_cast<int>(pick.size()) < K) {
          const int e = static_cast<int>(rng() % (rng() % 2 ? 5 : E));  // skewed: 0..4 hot
          if (std::find(pick.begin(), pick.end(), e) == pick.end()) pick.push_back(e);
        }
        for (int e : pick) ids.push_back(e), weights.push_back(1.0f / K);
      }
    };
    if (prefill_tokens) {
      for (int t = 0; t < prefill_tokens; ++t) add_token();
      offsets.push_back(prefill_tokens);
      phase.push_back(0);
    }
    for (int s = 0; s < decode_steps; ++s) {
      add_token();
      offsets.push_back(offsets.back() + 1);
      phase.push_back(1);
    }
  }
  TraceView view() const {
    TraceView v;
    v.n_layer = L, v.n_expert = E, v.top_k = K;
    v.n_steps = static_cast<int64_t>(phase.size());
    v.n_tokens = offsets.back();
    v.ids = ids.data(), v.weights = weights.data(), v.step_offsets = offsets.data(),
    v.phase = phase.data();
    return v;
  }
};

}  // namespace

HM_TEST(sim_conserves_counts_and_bytes) {
  RandomTrace tr(20, 200, 5);
  const auto layout = make_expert_layout(WeightFormat::kBF16, 2048, 768);
  const CostModel cost(hm::test::round_profile(), layout);
  for (const auto& name : policy_names()) {
    SimConfig cfg;
    cfg.policy = name;
    cfg.n_slots = 24;
    const SimResult r = simulate(tr.view(), hm::test::round_profile(), layout, cfg);
    HM_EXPECT(r.decode_steps == 200 && r.decode_tokens == 200 && r.prefill_tokens == 20);
    HM_EXPECT(r.layer_steps == 201 * tr.L);
    HM_EXPECT(r.selections == 200LL * tr.L * tr.K);  // decode: K distinct experts per layer-step
    HM_EXPECT(r.cpu_experts + r.gpu_experts == r.selections);
    HM_EXPECT(r.hits + r.in_flight <= r.selections);
    const int64_t copies = r.demand_copies + r.prefetch_copies + r.admit_copies;
    HM_EXPECT_NEAR(r.copy_bytes, static_cast<double>(copies) * layout.weight_bytes(), 1e-3);
    HM_EXPECT(r.step_latency_us.size() == 200u);
    double sum = 0;
    for (double x : r.step_latency_us) sum += x;
    HM_EXPECT_NEAR(sum, r.decode_time_us, 1e-6 * sum);
    HM_EXPECT(r.latency_p50_us <= r.latency_p99_us);
    int64_t layer_sel = 0;
    for (const auto& l : r.layers) layer_sel += l.selections;
    HM_EXPECT(layer_sel == r.selections);
    HM_EXPECT(r.cpu_busy <= 1.0 + 1e-9 && r.copy_busy <= 1.0 + 1e-9);
    if (name == "cpu") {
      // No cache: every expert on the CPU, back to back; nothing copied.
      HM_EXPECT(r.hits == 0 && copies == 0 && r.gpu_experts == 0);
      const double want = 200.0 * tr.L * (cost.layer_fixed() + tr.K * cost.t_cpu(1));
      HM_EXPECT_NEAR(r.decode_time_us, want, 1e-6 * want);
    }
    if (name == "static") HM_EXPECT(copies == 0 && r.hits > 0);
    if (name == "lru-fetch") {
      // Decode as the runtime runs it: a miss runs on the CPU (its copy lands for later steps).
      HM_EXPECT(r.cpu_experts > 0 && r.cpu_experts == r.selections - r.hits - r.in_flight);
      // The split's fetch-and-compute on the GPU in the same step (runtime_decode = false).
      SimConfig fetch = cfg;
      fetch.runtime_decode = false;
      HM_EXPECT(simulate(tr.view(), hm::test::round_profile(), layout, fetch).cpu_experts == 0);
    }
  }
}

HM_TEST(sim_oracle_bounds_hit_rate_of_online_policies) {
  RandomTrace tr(0, 300, 9);
  const auto layout = make_expert_layout(WeightFormat::kBF16, 2048, 768);
  // A fast copy engine (no throttling effects): the oracle's hit rate is the highest.
  auto prof = hm::test::round_profile();
  prof.h2d_gbps = 1e4;
  prof.copy_latency_us = 0;
  double oracle = 0, best_online = 0;
  for (const char* name : {"lru", "lfu", "value", "oracle"}) {
    SimConfig cfg;
    cfg.policy = name;
    cfg.n_slots = 20;
    cfg.predictor_accuracy = 0;  // no prefetch: pure replacement
    const double h = simulate(tr.view(), prof, layout, cfg).hit_rate;
    if (std::string(name) == "oracle")
      oracle = h;
    else
      best_online = std::max(best_online, h);
  }
  HM_EXPECT(oracle >= best_online - 1e-12);
}

HM_TEST(sim_bad_inputs) {
  RandomTrace tr(0, 10, 1);
  const auto layout = make_expert_layout(WeightFormat::kBF16, 64, 32);
  SimConfig cfg;
  cfg.policy = "lru";
  cfg.n_slots = 2;  // < top_k
  HM_EXPECT_THROWS(simulate(tr.view(), hm::test::round_profile(), layout, cfg), hm::ValueError);
  cfg.n_slots = 8;
  cfg.policy = "mru";
  HM_EXPECT_THROWS(simulate(tr.view(), hm::test::round_profile(), layout, cfg), hm::ValueError);
  cfg.policy = "lru";
  tr.ids[7] = 16;  // out of range
  HM_EXPECT_THROWS(simulate(tr.view(), hm::test::round_profile(), layout, cfg), hm::ValueError);
  tr.ids[7] = 0;
  cfg.predictor_accuracy = 1.5;
  HM_EXPECT_THROWS(simulate(tr.view(), hm::test::round_profile(), layout, cfg), hm::ValueError);
}
