// [NOTE] The value policy (ours, DESIGN.md section 5).
//
// Score. Every use of (layer, expert) at step t adds w to a score that halves every
// `halflife_steps`:   S(now) = sum_uses w * 2^(-(now - t) / halflife).
// That one number mixes recency (a use just now weighs 1) and frequency (many older uses add up),
// per layer, since each (layer, expert) has its own score: a layer whose experts repeat (layer 47)
// keeps high scores, one that does not (layer 0) keeps low ones, and the global pool hands out
// slots accordingly. Stored as log2(S) + now / halflife, i.e. log2 sum_uses w * 2^(t / halflife),
// which does not change as time passes, so it is the cache's eviction key (O(log slots) victims).
//
// Use weight w = (1 - weight_mix) + weight_mix * top_k * router_weight (mean 1). Tried and dropped
// (2026-11-28, no gain on the dev trace or synthetic seed 1): weighting each use by the expert's
// long-run share of its layer (a frequency prior), and longer half-lives (16 and 32 steps).
//
// Value. S * (1 - 2^(-1/halflife)) estimates the uses per step (an exponential moving average of
// the use indicator); times horizon_steps it is the predicted number of uses within the horizon,
// times saved_per_use = t_cpu(1) - t_gpu(1) it is the microseconds a cached copy saves:
//   value = rate * horizon * saved_per_use  (+ imminent * saved_per_use for a next-layer
//   prediction)
// The horizon (ValueParams::horizon_lifetimes > 0, the default) is 0.75 x the measured time an
// expert stays cached, n_slots / evictions per step (moving average over ~8 steps; evictions are
// the admissions that took a used slot). Only the prefetch bonus depends on it (both values scale
// with it alike): a longer stay makes a resident's remaining uses weigh more against one imminent
// use, so large budgets prefetch more selectively (measured: 25% budget 1.13x -> 1.16-1.18x over
// lru, 10% unchanged within 0.02x; bench/RESULTS.md).
// Admission: a miss (or a predicted next-layer expert) replaces the lowest-key victim only when its
// value exceeds the victim's value plus copy_factor * t_copy plus the copy's stall on the decode
// path (t_copy_stall, measured on the H200 machine: copies are not free even when the copy engine
// is idle, bench/RESULTS.md session 2): a copy must earn back the PCIe time it
// takes (which delays other copies) and whatever the victim would still have saved. A free slot
// admits anything. An expert's first use alone rarely admits it: one-off experts stay on the CPU.
//
// Speed (>= 1 M layer-steps/s for the simulator): no libm call per access. log2(2^a + 2^b) uses a
// table of log2(1 + 2^-d) (d in [0, 32), 1/64 steps, linear interpolation: error < 1e-6), log2 of
// the use weight and exp2 for values use frexp/ldexp with small polynomials (relative error < 1e-4,
// far below what changes a ranking); the decay factor 2^(-step / halflife) is computed once per
// step.
#include "core/policy_value.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace hm {
namespace value_math {

namespace {

constexpr int kMantBits = 10;  // log2 / exp2 tables: 1024 intervals
constexpr int kMant = 1 << kMantBits;
constexpr int kSumPerUnit = 64;  // log2(1 + 2^-d) table: 64 intervals per unit of d
constexpr int kSumMax = 32;      // beyond d = 32 the term is < 1e-9

struct Tables {
  double log2_mant[kMant + 1];                 // log2(1 + i / kMant)
  double exp2_frac[kMant + 1];                 // 2^(i / kMant)
  double log2_sum[kSumMax * kSumPerUnit + 1];  // log2(1 + 2^(-i / kSumPerUnit))
  Tables() {
    for (int i = 0; i <= kMant; ++i) {
      log2_mant[i] = std::log2(1.0 + static_cast<double>(i) / kMant);
      exp2_frac[i] = std::exp2(static_cast<double>(i) / kMant);
    }
    for (int i = 0; i <= kSumMax * kSumPerUnit; ++i)
      log2_sum[i] = std::log2(1.0 + std::exp2(-static_cast<double>(i) / kSumPerUnit));
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

double fast_log2(double x) {
  // x = 2^e * (1 + m), m in [0, 1): e from the exponent bits, log2(1 + m) from the table.
  x = std::max(x, 1e-300);
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const int e = static_cast<int>((bits >> 52) & 0x7ff) - 1023;
  const double m =
      static_cast<double>(bits & ((uint64_t(1) << 52) - 1)) * (1.0 / 4503599627370496.0);
  const double pos = m * kMant;
  const int i = static_cast<int>(pos);
  const double* t = tables().log2_mant;
  return e + t[i] + (t[i + 1] - t[i]) * (pos - i);
}

double fast_exp2(double x) {
  if (x < -1020) return 0.0;
  if (x > 1020) return std::numeric_limits<double>::infinity();
  const double fl = std::floor(x);
  const double pos = (x - fl) * kMant;
  const int i = std::min(static_cast<int>(pos), kMant - 1);
  const double* t = tables().exp2_frac;
  return std::ldexp(t[i] + (t[i + 1] - t[i]) * (pos - i), static_cast<int>(fl));
}

double log2_add(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  if (b == -std::numeric_limits<double>::infinity()) return a;
  const double hi = std::max(a, b), d = hi - std::min(a, b);
  if (d >= kSumMax) return hi;
  const double pos = d * kSumPerUnit;
  const int i = static_cast<int>(pos);
  const double* t = tables().log2_sum;
  return hi + t[i] + (t[i + 1] - t[i]) * (pos - i);
}

}  // namespace value_math

namespace {

using value_math::fast_exp2;
using value_math::fast_log2;
using value_math::log2_add;

class ValuePolicy final : public Policy {
 public:
  explicit ValuePolicy(const ValueParams& vp) : vp_(vp) {
    HM_CHECK(vp.halflife_steps > 0, "value policy: halflife_steps must be > 0, got ",
             vp.halflife_steps);
    HM_CHECK(vp.horizon_steps > 0, "value policy: horizon_steps must be > 0, got ",
             vp.horizon_steps);
    HM_CHECK(vp.weight_mix >= 0 && vp.weight_mix <= 1,
             "value policy: weight_mix must be in [0, 1], got ", vp.weight_mix);
    HM_CHECK(vp.copy_factor >= 0, "value policy: copy_factor must be >= 0, got ", vp.copy_factor);
    HM_CHECK(vp.stall_weight >= 0, "value policy: stall_weight must be >= 0, got ",
             vp.stall_weight);
    HM_CHECK(vp.horizon_lifetimes >= 0, "value policy: horizon_lifetimes must be >= 0, got ",
             vp.horizon_lifetimes);
    inv_h_ = 1.0 / vp.halflife_steps;
    per_step_ = 1.0 - std::exp2(-inv_h_);
    value_scale_ = per_step_ * vp_.horizon_steps;
    value_math::tables();  // build the tables outside the hot loop
  }
  const char* name() const override { return "value"; }
  MissMode miss_mode() const override { return MissMode::kSchedule; }
  bool wants_prefetch() const override { return true; }

  void reset(int n_layer, int n_expert, int top_k, const CostModel& cost) override {
    Policy::reset(n_layer, n_expert, top_k, cost);
    const std::size_t n = static_cast<std::size_t>(n_layer) * n_expert;
    log_score_.assign(n, -std::numeric_limits<double>::infinity());
    value_scale_ = per_step_ * vp_.horizon_steps;
    cur_step_ = 0;
    evictions_ = 0;
    evict_rate_ = -1;  // unknown until the first slot is known (admit) and a step has passed
    n_slots_ = 0;
    // The adaptive horizon was chosen while copies cost only idle copy-engine time: a long stay
    // then made more admissions pay. When a copy stalls the decode step (the profile's
    // copy_stall_fraction, measured on the H200 machine), the long horizon over-admits (simulated
    // value / best baseline 0.70-0.96 against 1.00-1.29 with the fixed horizon on the dev trace
    // and the synthetic preset, bench/RESULTS.md session 2): use horizon_steps then.
    adaptive_ = vp_.horizon_lifetimes > 0 && !(vp_.stall_aware && stall_us_ > 0);
  }

  void on_access(const Access& a) override {
    if (a.step != cur_step_) new_step(a.step);
    const int i = a.layer * n_expert_ + a.expert;
    double w = 1.0;
    if (vp_.weight_mix > 0)
      w = (1.0 - vp_.weight_mix) + vp_.weight_mix * top_k_ * a.weight / std::max(1, a.n_tokens);
    const double add =
        static_cast<double>(a.step) * inv_h_ + (w == 1.0 ? 0.0 : fast_log2(std::max(w, 1e-3)));
    log_score_[i] = log2_add(log_score_[i], add);
  }

  double key(int l, int e) const override { return log_score_[l * n_expert_ + e]; }

  // Preloaded experts get the score of their profile rate: uses per step r = f / (steps the
  // profile covers in that layer, sum_e f / top_k), held as S = r / per_step_ at step 0, so the
  // value is r * horizon * saved_per_use and decays with halflife_steps unless the run uses it.
  void warm_start(ExpertCache& cache, const std::vector<double>& freq) override {
    std::vector<double> steps(static_cast<std::size_t>(n_layer_), 0.0);
    if (freq.size() == static_cast<std::size_t>(n_layer_) * n_expert_)
      for (std::size_t i = 0; i < freq.size(); ++i) steps[i / n_expert_] += freq[i] / top_k_;
    preload_top(cache, freq, [&](int i, double f) {
      const double rate = f / std::max(steps[i / n_expert_], 1e-9);
      return log_score_[i] = std::log2(std::max(rate / per_step_, 1e-12));
    });
  }

  // Predicted uses within the horizon (before the saved-time factor).
  double uses(int l, int e, int64_t step) const {
    const double s = log_score_[l * n_expert_ + e];
    if (s == -std::numeric_limits<double>::infinity()) return 0.0;
    return fast_exp2(s - static_cast<double>(step) * inv_h_) * value_scale_;
  }
  double value_us(int l, int e, int64_t step) const { return uses(l, e, step) * saved_us_; }

  bool admit(const ExpertCache& cache, int l, int e, int victim, int64_t step,
             double imminent) const override {
    n_slots_ = cache.n_slots();
    if (victim < 0) return true;
    const double mine = value_us(l, e, step) + imminent * saved_us_;
    const double theirs = value_us(cache.slot_layer(victim), cache.slot_expert(victim), step);
    const bool yes = mine > theirs + vp_.copy_factor * copy_us_ +
                                (vp_.stall_aware ? vp_.stall_weight * stall_us_ : 0.0);
    evictions_ += yes;  // the scheduler takes the slot whenever admit says yes
    return yes;
  }

 private:
  // Adaptive horizon (horizon_lifetimes > 0): fold the evictions of the steps since the last call
  // into a moving average (time constant kRateSteps steps) and set the horizon to
  // horizon_lifetimes * n_slots / evictions per step, within [1, 4 * n_slots].
  void new_step(int64_t step) {
    const int64_t gap = std::max<int64_t>(1, step - cur_step_);
    cur_step_ = step;
    if (!adaptive_ || n_slots_ <= 0) return;
    const double per_step = static_cast<double>(evictions_) / static_cast<double>(gap);
    evictions_ = 0;
    constexpr double kRateSteps = 8.0;
    evict_rate_ = evict_rate_ < 0 ? static_cast<double>(n_slots_) / vp_.horizon_steps : evict_rate_;
    evict_rate_ += (per_step - evict_rate_) * std::min(1.0, static_cast<double>(gap) / kRateSteps);
    const double life = static_cast<double>(n_slots_) / std::max(evict_rate_, 1e-9);
    const double horizon = std::clamp(vp_.horizon_lifetimes * life, 1.0, 4.0 * n_slots_);
    value_scale_ = per_step_ * horizon;
  }

  ValueParams vp_;
  bool adaptive_ = true;  // horizon from the measured stay (see reset)
  double inv_h_ = 0, per_step_ = 0, value_scale_ = 0;
  int64_t cur_step_ = 0;
  mutable int64_t evictions_ = 0;  // admits that evicted since cur_step_ (admit is const)
  mutable int n_slots_ = 0;        // the cache's size, learnt in admit
  double evict_rate_ = -1;         // evictions per step, moving average; < 0: none measured yet
  std::vector<double> log_score_;  // [n_layer * n_expert] log2 sum w * 2^(t / halflife)
};

}  // namespace

std::unique_ptr<Policy> make_value_policy(const ValueParams& vp) {
  return std::make_unique<ValuePolicy>(vp);
}

double value_estimate_us(const Policy& policy, int layer, int expert, int64_t step) {
  const auto* v = dynamic_cast<const ValuePolicy*>(&policy);
  HM_CHECK(v != nullptr, "value_estimate_us needs the value policy, got '", policy.name(), "'");
  return v->value_us(layer, expert, step);
}

}  // namespace hm
