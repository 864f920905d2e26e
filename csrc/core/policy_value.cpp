// [NOTE] The value policy (ours, DESIGN.md section 5).
//
// Score. Every use of (layer, expert) at step t adds w = (1 - weight_mix) + weight_mix * top_k *
// router_weight (mean 1; experts chosen with a larger router weight count more) to a score that
// halves every `halflife_steps`:   S(now) = sum_uses w * 2^(-(now - t) / halflife).
// That one number mixes recency (a use just now weighs 1) and frequency (many older uses add up),
// per layer, since each (layer, expert) has its own score: a layer whose experts repeat (layer 47)
// keeps high scores, one that does not (layer 0) keeps low ones, and the global pool hands out
// slots accordingly. Stored as log2(S) + now / halflife, i.e. log2 sum_uses w * 2^(t / halflife),
// which does not change as time passes, so it is the cache's eviction key (O(log slots) victims).
//
// Value. S * (1 - 2^(-1/halflife)) estimates the uses per step (an exponential moving average of the
// use indicator); times horizon_steps it is the predicted number of uses within the horizon, times
// saved_per_use = t_cpu(1) - t_gpu(1) it is the microseconds a cached copy saves:
//   value = rate * horizon * saved_per_use  (+ imminent * saved_per_use for a next-layer prediction)
// Admission: a miss (or a predicted next-layer expert) replaces the lowest-key victim only when its
// value exceeds the victim's value plus copy_factor * t_copy: a copy must earn back the PCIe time it
// takes (which delays other copies) and whatever the victim would still have saved. A free slot
// admits anything. An expert's first use alone rarely admits it: one-off experts stay on the CPU.
#include "core/policy_value.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace hm {
namespace {

class ValuePolicy final : public Policy {
 public:
  explicit ValuePolicy(const ValueParams& vp) : vp_(vp) {
    HM_CHECK(vp.halflife_steps > 0, "value policy: halflife_steps must be > 0, got ", vp.halflife_steps);
    HM_CHECK(vp.horizon_steps > 0, "value policy: horizon_steps must be > 0, got ", vp.horizon_steps);
    HM_CHECK(vp.weight_mix >= 0 && vp.weight_mix <= 1, "value policy: weight_mix must be in [0, 1], got ",
             vp.weight_mix);
    HM_CHECK(vp.copy_factor >= 0, "value policy: copy_factor must be >= 0, got ", vp.copy_factor);
    inv_h_ = 1.0 / vp.halflife_steps;
    per_step_ = 1.0 - std::exp2(-inv_h_);
  }
  const char* name() const override { return "value"; }
  MissMode miss_mode() const override { return MissMode::kSchedule; }
  bool wants_prefetch() const override { return true; }

  void reset(int n_layer, int n_expert, int top_k, const CostModel& cost) override {
    Policy::reset(n_layer, n_expert, top_k, cost);
    log_score_.assign(static_cast<std::size_t>(n_layer) * n_expert,
                      -std::numeric_limits<double>::infinity());
  }

  void on_access(const Access& a) override {
    const double w = (1.0 - vp_.weight_mix) + vp_.weight_mix * top_k_ * a.weight / std::max(1, a.n_tokens);
    const double add = static_cast<double>(a.step) * inv_h_ + std::log2(std::max(w, 1e-3));
    double& s = log_score_[a.layer * n_expert_ + a.expert];
    if (std::isinf(s)) {
      s = add;
    } else {  // log2(2^s + 2^add) without overflow
      const double hi = std::max(s, add), lo = std::min(s, add);
      s = hi + std::log2(1.0 + std::exp2(lo - hi));
    }
  }

  double key(int l, int e) const override { return log_score_[l * n_expert_ + e]; }

  double value_us(int l, int e, int64_t step) const {
    const double s = log_score_[l * n_expert_ + e];
    if (std::isinf(s)) return 0.0;
    const double score_now = std::exp2(s - static_cast<double>(step) * inv_h_);
    return score_now * per_step_ * vp_.horizon_steps * saved_us_;
  }

  bool admit(const ExpertCache& cache, int l, int e, int victim, int64_t step,
             double imminent) const override {
    if (victim < 0) return true;
    const double mine = value_us(l, e, step) + imminent * saved_us_;
    const double theirs = value_us(cache.slot_layer(victim), cache.slot_expert(victim), step);
    return mine > theirs + vp_.copy_factor * copy_us_;
  }

 private:
  ValueParams vp_;
  double inv_h_ = 0, per_step_ = 0;
  std::vector<double> log_score_;  // [n_layer * n_expert] log2 sum w * 2^(t / halflife)
};

}  // namespace

std::unique_ptr<Policy> make_value_policy(const ValueParams& vp) { return std::make_unique<ValuePolicy>(vp); }

double value_estimate_us(const Policy& policy, int layer, int expert, int64_t step) {
  const auto* v = dynamic_cast<const ValuePolicy*>(&policy);
  HM_CHECK(v != nullptr, "value_estimate_us needs the value policy, got '", policy.name(), "'");
  return v->value_us(layer, expert, step);
}

}  // namespace hm
