// CPU MoE layer vs a plain double-precision reference on dequantised weights, for every ISA this
// machine runs; plus bad input. (The float32 torch tests in tests/test_cpu_experts.py cover more
// shapes; this one also runs under ASan+UBSan in CI.)
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/weight_format.h"
#include "cpu/isa.h"
#include "cpu/moe_cpu.h"
#include "cpu/numeric.h"
#include "hm_test.h"

namespace {

using hm::WeightFormat;

// Encodes row-major [rows, n] values into the format; returns the dequantised values in `deq`.
void encode(WeightFormat f, const std::vector<float>& v, int64_t rows, int64_t n, uint8_t* dst,
            std::vector<float>& deq) {
  deq.resize(v.size());
  const std::size_t rb = hm::row_bytes(f, n);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = dst + r * rb;
    if (f == WeightFormat::kBF16) {
      for (int64_t k = 0; k < n; ++k) {
        const uint16_t b = hm::cpu::f32_to_bf16(v[r * n + k]);
        std::memcpy(row + 2 * k, &b, 2);
        deq[r * n + k] = hm::cpu::bf16_to_f32(b);
      }
    } else {
      for (int64_t b = 0; b < n / 32; ++b) {
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(v[r * n + b * 32 + i]));
        // d as fp16: use a power-of-two-friendly value that fp16 holds exactly.
        const float d = std::ldexp(std::ceil(std::ldexp(amax / 127.f, 10)), -10);
        const uint16_t dh = static_cast<uint16_t>(((static_cast<int>(std::log2(d)) + 15) << 10));
        const float dd = hm::cpu::f16_to_f32(dh);
        std::memcpy(row + b * 34, &dh, 2);
        for (int i = 0; i < 32; ++i) {
          const float q =
              std::fmax(-127.f, std::fmin(127.f, std::nearbyint(v[r * n + b * 32 + i] / dd)));
          row[b * 34 + 2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
          deq[r * n + b * 32 + i] = dd * q;
        }
      }
    }
  }
}

// help: the test's thread joins the pool's workers (JobHandle::help) as the runtime's planner
// does.
void check_layer(WeightFormat f, int64_t H, int64_t I, int T, int E, int k, hm::cpu::Isa isa,
                 double tol, bool help = false) {
  std::mt19937 rng(1234 + static_cast<int>(f) * 7 + T);
  std::normal_distribution<float> nd(0.f, 1.f);
  const auto L = hm::make_expert_layout(f, H, I);
  std::vector<uint8_t> store(L.stride * E + 64);
  std::vector<std::vector<float>> dg(E), du(E), dd(E);
  std::vector<const uint8_t*> ptrs(E);
  for (int e = 0; e < E; ++e) {
    uint8_t* base = store.data() + e * L.stride;
    ptrs[e] = base;
    std::vector<float> g(I * H), u(I * H), d(H * I);
    for (auto* m : {&g, &u, &d})
      for (auto& v : *m) v = nd(rng) * 0.05f;
    encode(f, g, I, H, base + L.gate_offset, dg[e]);
    encode(f, u, I, H, base + L.up_offset, du[e]);
    encode(f, d, H, I, base + L.down_offset, dd[e]);
  }
  std::vector<float> x(T * H), out(T * H), ref(T * H);
  for (auto& v : x) v = nd(rng);
  for (int i = 0; i < T * H; ++i) out[i] = ref[i] = nd(rng);  // accumulates into existing values
  const std::vector<float> init = out;
  std::vector<hm::cpu::ExpertAssignment> as;
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j)
      as.push_back({t, static_cast<int32_t>((t * 5 + j * 3) % E), 0.1f + 0.2f * j});
  for (const auto& a : as) {
    std::vector<double> h(I);
    for (int64_t i = 0; i < I; ++i) {
      double g = 0, u = 0;
      for (int64_t c = 0; c < H; ++c) {
        g += double(dg[a.expert][i * H + c]) * x[a.token * H + c];
        u += double(du[a.expert][i * H + c]) * x[a.token * H + c];
      }
      h[i] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t r = 0; r < H; ++r) {
      double s = 0;
      for (int64_t i = 0; i < I; ++i) s += double(dd[a.expert][r * I + i]) * h[i];
      ref[a.token * H + r] += static_cast<float>(a.weight * s);
    }
  }
  hm::cpu::MoeLayerArgs args;
  args.layout = L;
  args.experts = ptrs.data();
  args.n_experts = E;
  args.x = x.data();
  args.tokens = T;
  args.assignments = as.data();
  args.n_assignments = static_cast<int64_t>(as.size());
  args.out = out.data();
  hm::cpu::ThreadPool pool(3, false);
  auto job = hm::cpu::submit_moe_layer(pool, args, isa);
  if (help) job.help();
  job.wait();
  // Tolerance relative to the layer's contribution (not to the initial values of out, which
  // would dwarf it and let a wrong kernel pass).
  double max_err = 0, max_ref = 0;
  for (int i = 0; i < T * H; ++i) {
    max_err = std::fmax(max_err, std::fabs(out[i] - ref[i]));
    max_ref = std::fmax(max_ref, std::fabs(double(ref[i]) - init[i]));
  }
  HM_EXPECT(max_ref > 1e-3);
  HM_EXPECT(max_err <= tol * max_ref);
  if (!(max_err <= tol * max_ref))
    std::cerr << "  " << hm::format_name(f) << " " << hm::cpu::isa_name(isa) << " T=" << T
              << " max_err=" << max_err << " max_ref=" << max_ref << "\n";
}

std::vector<hm::cpu::Isa> runnable_isas() {
  std::vector<hm::cpu::Isa> v{hm::cpu::Isa::kGeneric};
  if (hm::cpu::avx2_usable()) v.push_back(hm::cpu::Isa::kAvx2);
  if (hm::cpu::avx512_usable()) v.push_back(hm::cpu::Isa::kAvx512);
  if (hm::cpu::amx_usable()) v.push_back(hm::cpu::Isa::kAmx);
  return v;
}

}  // namespace

HM_TEST(cpu_moe_matches_reference_all_isas) {
  for (auto isa : runnable_isas()) {
    // Generic and AVX2 bf16 are exact apart from sum order; AVX512/AMX bf16 round activations
    // to bf16 (2^-9).
    const double bf16_tol = isa <= hm::cpu::Isa::kAvx2 ? 1e-4 : 2e-2;
    for (int T : {1, 3, 17}) {
      const bool help = T != 3;
      check_layer(WeightFormat::kBF16, 72, 40, T, 6, 2, isa, bf16_tol, help);  // odd: not % 32
      check_layer(WeightFormat::kQ8_0, 96, 64, T, 6, 2, isa, 3e-2, help);      // Q8 activations
      check_layer(WeightFormat::kBF16, 72, 40, T, 1, 1, isa, bf16_tol, help);  // one expert
    }
  }
}

HM_TEST(cpu_moe_expert_warm_runs_cancels_and_checks_input) {
  for (auto f : {WeightFormat::kBF16, WeightFormat::kQ8_0}) {
    const auto L = hm::make_expert_layout(f, 256, 96);
    std::vector<uint8_t> store(L.stride * 3, 1);
    const uint8_t* ptrs[3] = {store.data(), store.data() + L.stride, store.data() + 2 * L.stride};
    hm::cpu::ThreadPool pool(2, false);
    auto w = hm::cpu::submit_expert_warm(pool, L, ptrs, 3);
    HM_EXPECT(w.valid());
    w.wait();
    HM_EXPECT(w.done());
    // Cancelled at once, then a real job behind it in the pool's queue: both finish.
    auto big = hm::cpu::submit_expert_warm(pool, L, ptrs, 3);
    big.cancel();
    big.wait();
    HM_EXPECT(big.done());
    HM_EXPECT(hm::cpu::submit_expert_warm(pool, L, ptrs, 0).done());  // nothing to warm
    const uint8_t* bad[1] = {nullptr};
    HM_EXPECT_THROWS(hm::cpu::submit_expert_warm(pool, L, bad, 1), hm::ValueError);
    HM_EXPECT_THROWS(hm::cpu::submit_expert_warm(pool, L, ptrs, -1), hm::ValueError);
    auto wrong = L;
    wrong.down_offset += 64;
    HM_EXPECT_THROWS(hm::cpu::submit_expert_warm(pool, wrong, ptrs, 1), hm::ValueError);
  }
}

HM_TEST(cpu_moe_rejects_bad_input) {
  const auto L = hm::make_expert_layout(WeightFormat::kBF16, 64, 32);
  std::vector<uint8_t> store(L.stride);
  const uint8_t* ptrs[1] = {store.data()};
  std::vector<float> x(64), out(64);
  hm::cpu::ExpertAssignment a{0, 1, 1.f};  // expert 1 of 1: out of range
  hm::cpu::MoeLayerArgs args;
  args.layout = L;
  args.experts = ptrs;
  args.n_experts = 1;
  args.x = x.data();
  args.tokens = 1;
  args.assignments = &a;
  args.n_assignments = 1;
  args.out = out.data();
  hm::cpu::ThreadPool pool(1, false);
  HM_EXPECT_THROWS(hm::cpu::run_moe_layer(pool, args, hm::cpu::Isa::kGeneric), hm::ValueError);
  a = {1, 0, 1.f};  // token 1 of 1
  HM_EXPECT_THROWS(hm::cpu::run_moe_layer(pool, args, hm::cpu::Isa::kGeneric), hm::ValueError);
  a = {0, 0, NAN};
  HM_EXPECT_THROWS(hm::cpu::run_moe_layer(pool, args, hm::cpu::Isa::kGeneric), hm::ValueError);
  a = {0, 0, 1.f};
  hm::cpu::run_moe_layer(pool, args, hm::cpu::Isa::kGeneric);  // valid: runs
}
