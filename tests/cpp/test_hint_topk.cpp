// hint_topk: the planner's top k of next-layer router logits (fp32 and bf16) against a plain
// sort, NaN never before a number, ties to the lower id.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "hm_test.h"
#include "runtime/hint_topk.h"

namespace {

using hm::runtime::HintKind;

uint16_t to_bf16(float f) {  // truncation: the test compares on the bf16 values themselves
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>(b >> 16);
}

std::vector<int32_t> sorted_topk(const std::vector<float>& v, int T, int E, int k) {
  std::vector<int32_t> out;
  for (int t = 0; t < T; ++t) {
    std::vector<int32_t> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    const float* row = v.data() + static_cast<std::size_t>(t) * E;
    auto key = [&](int32_t e) { return std::isnan(row[e]) ? -INFINITY : row[e]; };
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
    out.insert(out.end(), idx.begin(), idx.begin() + k);
  }
  return out;
}

}  // namespace

HM_TEST(hint_topk_matches_a_sort_fp32_and_bf16) {
  std::mt19937 rng(3);
  std::normal_distribution<float> n01;
  for (const int E : {8, 60, 128, 257}) {
    for (const int k : {1, 2, 8}) {
      const int T = 3;
      std::vector<float> v(static_cast<std::size_t>(T) * E);
      for (auto& x : v) x = n01(rng);
      v[1] = v[2];  // a tie
      v[E + 4] = NAN;
      std::vector<int32_t> got(static_cast<std::size_t>(T) * k, -1);
      hm::runtime::hint_topk(v.data(), HintKind::kLogitsF32, T, E, k, got.data());
      HM_EXPECT(got == sorted_topk(v, T, E, k));
      std::vector<uint16_t> vb(v.size());
      std::vector<float> vr(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) {
        vb[i] = to_bf16(v[i]);
        const uint32_t bits = static_cast<uint32_t>(vb[i]) << 16;
        std::memcpy(&vr[i], &bits, 4);
      }
      hm::runtime::hint_topk(vb.data(), HintKind::kLogitsBf16, T, E, k, got.data());
      HM_EXPECT(got == sorted_topk(vr, T, E, k));
    }
  }
  // Every logit NaN: the first k ids, never an id out of range.
  std::vector<float> nan(16, NAN);
  std::vector<int32_t> got(4, -1);
  hm::runtime::hint_topk(nan.data(), HintKind::kLogitsF32, 1, 16, 4, got.data());
  HM_EXPECT((got == std::vector<int32_t>{0, 1, 2, 3}));
}
