// Cost model: the documented formulas on round numbers, FLOP-bound growth, refine(), bad profiles.
#include "core/cost_model.h"
#include "hm_test.h"
#include "test_engine_util.h"

using namespace hm;

HM_TEST(cost_formulas_round_numbers) {
  const auto layout = make_expert_layout(WeightFormat::kBF16, 2048, 768);
  const double B = static_cast<double>(layout.weight_bytes());  // 9,437,184
  HM_EXPECT(layout.weight_bytes() == 3u * 2048 * 768 * 2);
  CostModel c(hm::test::round_profile(), layout);
  // CPU: 4 us + B / (50 GB/s * 0.5); GPU: 1 us + B / 1000 GB/s; copy: 10 us + B / 20 GB/s.
  HM_EXPECT_NEAR(c.t_cpu(1), 4 + B / 25e3, 1e-9);
  HM_EXPECT_NEAR(c.t_gpu(1), 1 + B / 1000e3, 1e-9);
  HM_EXPECT_NEAR(c.t_copy(), 10 + B / 20e3, 1e-9);
  // Large n: FLOP bound. 6 * H * I * n flops at 2 TFLOP/s (CPU), 100 TFLOP/s (GPU).
  const double flops = 6.0 * 2048 * 768 * 512;
  HM_EXPECT_NEAR(c.t_cpu(512), 4 + flops / 2e6, 1e-6);
  HM_EXPECT_NEAR(c.t_gpu(512), 1 + flops / 100e6, 1e-6);
  HM_EXPECT(c.t_cpu(64) >= c.t_cpu(1));
  // q8_0 moves fewer bytes.
  CostModel q(hm::test::round_profile(), make_expert_layout(WeightFormat::kQ8_0, 2048, 768));
  HM_EXPECT(q.t_copy() < c.t_copy());
  HM_EXPECT(q.expert_bytes() == 3u * 2048 * 768 / 32 * 34);
}

HM_TEST(cost_refine_moves_toward_observed) {
  CostModel c(hm::test::round_profile(), make_expert_layout(WeightFormat::kBF16, 2048, 768));
  const double before = c.t_cpu(1);
  for (int i = 0; i < 200; ++i) c.refine(Resource::kCpu, 1, 2.0 * before, 0.1);
  HM_EXPECT_NEAR(c.t_cpu(1), 2.0 * before, 1e-6 * before);
  HM_EXPECT_NEAR(c.scale(Resource::kCpu), 2.0, 1e-6);
  HM_EXPECT_NEAR(c.scale(Resource::kGpu), 1.0, 0);
  c.refine(Resource::kCopy, 0, c.t_copy() * 0.5, 1.0);
  HM_EXPECT_NEAR(c.scale(Resource::kCopy), 0.5, 1e-12);
  HM_EXPECT_THROWS(c.refine(Resource::kCpu, 1, -1.0), hm::ValueError);
  HM_EXPECT_THROWS(c.refine(Resource::kGpu, 1, 5.0, 0.0), hm::ValueError);
}

HM_TEST(cost_bad_profile) {
  auto p = hm::test::round_profile();
  p.h2d_gbps = 0;
  HM_EXPECT_THROWS(CostModel(p, make_expert_layout(WeightFormat::kBF16, 64, 32)), hm::ValueError);
  p = hm::test::round_profile();
  p.bf16.cpu_efficiency = 1.5;
  HM_EXPECT_THROWS(p.validate(), hm::ValueError);
}
