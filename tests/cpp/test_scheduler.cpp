// Scheduler: the split equals the brute-force best of all 2^k assignments (k <= 8, random costs),
// decode placements, plan_layer's pins, copies and bad inputs.
#include <random>

#include "core/scheduler.h"
#include "hm_test.h"
#include "test_engine_util.h"

using namespace hm;

HM_TEST(scheduler_split_equals_brute_force) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  LayerSplitter sp;
  for (int trial = 0; trial < 400; ++trial) {
    const int k = 1 + trial % 8;
    std::vector<SplitItem> items(k);
    Queues q;
    q.now = 100;
    q.cpu_free = 100 + 50 * u(rng);
    q.gpu_free = 100 + 50 * u(rng);
    q.copy_free = 60 + 200 * u(rng);
    const bool identical = trial % 5 == 0;  // decode-like: identical misses (grouped search)
    for (auto& it : items) {
      it.t_cpu = identical ? 200 : 20 + 400 * u(rng);
      it.t_gpu = identical ? 10 : 2 + 60 * u(rng);
      it.t_copy = identical ? 300 : 50 + 400 * u(rng);
      it.needs_copy = identical || u(rng) < 0.6;
      it.ready = it.needs_copy ? 0 : 100 + 300 * u(rng) * (u(rng) < 0.5);
      const double c = u(rng);
      it.choice = c < 0.7 ? Choice::kFree : c < 0.85 ? Choice::kForceCpu : Choice::kForceGpu;
    }
    const double ovh = 5 * u(rng);
    auto got_items = items;
    const SplitResult got = sp.split(got_items.data(), k, q, ovh);
    // The chosen assignment respects forced choices, and evaluate() agrees with the result.
    for (int i = 0; i < k; ++i) {
      if (items[i].choice == Choice::kForceCpu) HM_EXPECT(got_items[i].where == Where::kCpu);
      if (items[i].choice == Choice::kForceGpu) HM_EXPECT(got_items[i].where != Where::kCpu);
    }
    auto check_items = got_items;
    HM_EXPECT_NEAR(sp.evaluate(check_items.data(), k, q, ovh).finish, got.finish, 1e-9);
    double best = 1e300;
    for (int mask = 0; mask < (1 << k); ++mask) {
      bool ok = true;
      auto b = items;
      for (int i = 0; i < k; ++i) {
        const bool gpu = mask >> i & 1;
        if ((items[i].choice == Choice::kForceCpu && gpu) ||
            (items[i].choice == Choice::kForceGpu && !gpu))
          ok = false;
        b[i].where = gpu ? (b[i].needs_copy ? Where::kFetch : Where::kGpu) : Where::kCpu;
      }
      if (ok) best = std::min(best, sp.evaluate(b.data(), k, q, ovh).finish);
    }
    HM_EXPECT_NEAR(got.finish, best, 1e-9);
  }
}

HM_TEST(scheduler_decode_placements) {
  // 8 selected, 3 resident: hits go to the GPU; with a copy slower than the CPU the misses mostly
  // stay on the CPU, but with 5 misses fetching some shortens the layer.
  ExpertCache cache(2, 16, 8);
  auto policy = make_policy("value");
  CostModel cost(hm::test::round_profile(), make_expert_layout(WeightFormat::kBF16, 2048, 768));
  Scheduler s(cache, *policy, cost, 8);
  for (int e : {0, 1, 2}) cache.preload(0, e, 0.0);
  std::vector<Selected> sel(8);
  for (int i = 0; i < 8; ++i) sel[i].expert = i, sel[i].weight = 0.125f;
  PlanInput in;
  in.layer = 0;
  in.step = 0;
  in.selected = sel.data();
  in.n_selected = 8;
  in.queues = {1000, 1000, 1000, 0};
  LayerPlan plan;
  s.plan_layer(in, plan);
  HM_EXPECT(plan.n_hit == 3 && plan.n_miss == 5);
  int cpu = 0, fetch = 0;
  for (const auto& pe : plan.experts) {
    if (pe.hit) HM_EXPECT(pe.where == Where::kGpu && pe.slot >= 0);
    cpu += pe.where == Where::kCpu;
    fetch += pe.where == Where::kFetch;
  }
  HM_EXPECT(cpu + fetch == 5);
  HM_EXPECT(fetch >= 1);  // 5 x 381 us on the CPU vs 482 us per copy: fetching one pays
  HM_EXPECT(plan.timing.finish < 1000 + 5 * cost.t_cpu(1));
  // Every slot the plan names is pinned until release; nothing pinned stays evictable.
  for (int slot : plan.pinned) HM_EXPECT(cache.pins(slot) >= 1);
  HM_EXPECT(plan.pinned.size() >= 3);
  LayerPlan other;
  HM_EXPECT_THROWS(s.plan_layer(in, plan), hm::ValueError);  // previous plan not released
  s.release(plan);
  for (int sl = 0; sl < cache.n_slots(); ++sl) HM_EXPECT(cache.pins(sl) == 0);
  HM_EXPECT(cache.consistent());
  sel[0].expert = 16;
  HM_EXPECT_THROWS(s.plan_layer(in, other), hm::ValueError);  // id out of range
}

HM_TEST(scheduler_prefill_uploads_whole_layer) {
  // Hundreds of tokens per expert: the CPU is FLOP bound, so every expert is uploaded and run on
  // GPU.
  ExpertCache cache(1, 16, 8);
  auto policy = make_policy("value");
  CostModel cost(hm::test::round_profile(), make_expert_layout(WeightFormat::kBF16, 2048, 768));
  Scheduler s(cache, *policy, cost, 8);
  std::vector<Selected> sel(16);
  for (int i = 0; i < 16; ++i)
    sel[i].expert = i, sel[i].n_tokens = 256 + 64 * (i % 3), sel[i].weight = 4.f;
  PlanInput in;
  in.selected = sel.data();
  in.n_selected = 16;
  in.queues = {0, 0, 0, 0};
  LayerPlan plan;
  s.plan_layer(in, plan);
  HM_EXPECT(plan.timing.n_fetch >= 12);
  HM_EXPECT(plan.timing.finish < 16 * cost.t_cpu(256) / 2);
  s.release(plan);
}

HM_TEST(scheduler_budget_smaller_than_k) {
  ExpertCache cache(2, 16, 4);
  auto lru = make_policy("lru");
  auto cpu = make_policy("cpu");
  CostModel cost(hm::test::round_profile(), make_expert_layout(WeightFormat::kBF16, 64, 32));
  HM_EXPECT_THROWS(Scheduler(cache, *lru, cost, 8), hm::ValueError);
  Scheduler ok(cache, *cpu, cost, 8);  // the cpu policy needs no slots
  HM_EXPECT_THROWS(Scheduler(cache, *lru, cost, 17), hm::ValueError);
}

HM_TEST(scheduler_hints_protect_next_layer_experts_from_demand_victims) {
  // Full cache of 2 slots: (1, 3), a predicted expert of the next layer, has the smallest key and
  // would be the victim of layer 0's demand fetch; the hint pins it, so (0, 5) is evicted instead.
  // Without the hint the same plan evicts (1, 3): the pin, not the keys, decides.
  auto prof = hm::test::round_profile();
  prof.h2d_gbps = 1e4;  // copies far cheaper than the CPU: the split fetches the miss
  prof.copy_latency_us = 0.1;
  CostModel cost(prof, make_expert_layout(WeightFormat::kBF16, 2048, 768));
  for (bool with_hint : {true, false}) {
    ExpertCache cache(2, 8, 2);
    auto policy = make_policy("value");
    Scheduler s(cache, *policy, cost, 1);
    cache.preload(1, 3, -100.0);  // never accessed: value 0, lowest key
    cache.preload(0, 5, -50.0);
    Selected sel;
    sel.expert = 2;
    sel.weight = 1.f;
    const int hint = 3;
    PlanInput in;
    in.layer = 0;
    in.selected = &sel;
    in.n_selected = 1;
    in.queues = {0, 0, 0, 0};
    in.hints = with_hint ? &hint : nullptr;
    in.n_hints = with_hint ? 1 : 0;
    in.hint_probability = 0.9;
    LayerPlan plan;
    s.plan_layer(in, plan);
    HM_EXPECT(plan.n_demand == 1 && plan.n_staging == 0);
    HM_EXPECT(cache.lookup(0, 2) >= 0);
    HM_EXPECT((cache.lookup(1, 3) >= 0) == with_hint);
    HM_EXPECT((cache.lookup(0, 5) >= 0) == !with_hint);
    s.release(plan);
    for (int sl = 0; sl < cache.n_slots(); ++sl) HM_EXPECT(cache.pins(sl) == 0);  // hints unpinned
    HM_EXPECT(cache.consistent());
  }
}
