// The baseline policies (cpu, static, lru, lfu, lru-fetch), the oracle, and the factory by name.
// The value policy lives in policy_value.cpp.
#include <algorithm>
#include <numeric>

#include "core/policy.h"
#include "core/policy_value.h"

namespace hm {

void Policy::reset(int n_layer, int n_expert, int top_k, const CostModel& cost) {
  n_layer_ = n_layer;
  n_expert_ = n_expert;
  top_k_ = top_k;
  saved_us_ = cost.saved_per_use();
  copy_us_ = cost.t_copy();
  stall_us_ = cost.t_copy_stall();
}

namespace {

class CpuPolicy final : public Policy {
 public:
  const char* name() const override { return "cpu"; }
  MissMode miss_mode() const override { return MissMode::kCpu; }
  bool uses_cache() const override { return false; }
  void on_access(const Access&) override {}
  double key(int, int) const override { return 0.0; }
  bool admit(const ExpertCache&, int, int, int, int64_t, double) const override { return false; }
};

// Fixed placement: the n_slots most used (layer, expert) pairs of the frequency profile.
class StaticPolicy final : public Policy {
 public:
  const char* name() const override { return "static"; }
  MissMode miss_mode() const override { return MissMode::kCpu; }
  void on_access(const Access&) override {}
  double key(int, int) const override { return 0.0; }
  bool admit(const ExpertCache&, int, int, int, int64_t, double) const override { return false; }
  void warm_start(ExpertCache& cache, const std::vector<double>& freq) override {
    preload_top(cache, freq, [](int, double f) { return f; });
  }
};

// LRU (and lru-fetch): key = tick of the last access.
class LruPolicy final : public Policy {
 public:
  explicit LruPolicy(bool fetch) : fetch_(fetch) {}
  const char* name() const override { return fetch_ ? "lru-fetch" : "lru"; }
  MissMode miss_mode() const override { return fetch_ ? MissMode::kFetch : MissMode::kCpuAdmit; }
  void reset(int n_layer, int n_expert, int top_k, const CostModel& cost) override {
    Policy::reset(n_layer, n_expert, top_k, cost);
    last_.assign(static_cast<std::size_t>(n_layer) * n_expert, -1.0);
  }
  void on_access(const Access& a) override {
    last_[a.layer * n_expert_ + a.expert] = static_cast<double>(a.tick);
  }
  double key(int l, int e) const override { return last_[l * n_expert_ + e]; }
  bool admit(const ExpertCache&, int, int, int, int64_t, double) const override { return true; }
  // Preloaded experts count as used before the first step (ticks < 0), more used ones later:
  // anything used in the run outranks them, and among them the least used goes first.
  void warm_start(ExpertCache& cache, const std::vector<double>& freq) override {
    double top = 0;
    for (double f : freq) top = std::max(top, f);
    preload_top(cache, freq,
                [&](int i, double f) { return last_[i] = -1.0 + 0.5 * f / (top + 1.0); });
  }

 private:
  bool fetch_;
  std::vector<double> last_;
};

// LFU over the whole history; ties broken by recency (key = count * 2^32 + tick).
class LfuPolicy final : public Policy {
 public:
  const char* name() const override { return "lfu"; }
  MissMode miss_mode() const override { return MissMode::kCpuAdmit; }
  void reset(int n_layer, int n_expert, int top_k, const CostModel& cost) override {
    Policy::reset(n_layer, n_expert, top_k, cost);
    count_.assign(static_cast<std::size_t>(n_layer) * n_expert, 0.0);
    last_.assign(static_cast<std::size_t>(n_layer) * n_expert, 0.0);
  }
  void on_access(const Access& a) override {
    const int i = a.layer * n_expert_ + a.expert;
    count_[i] += 1.0;
    last_[i] = static_cast<double>(a.tick);
  }
  double key(int l, int e) const override {
    const int i = l * n_expert_ + e;
    return count_[i] * 4294967296.0 + last_[i];
  }
  bool admit(const ExpertCache&, int, int, int, int64_t, double) const override { return true; }
  // Preloaded experts start with their profile counts scaled to one use at most (a hint, not
  // history that would outweigh the run's own uses).
  void warm_start(ExpertCache& cache, const std::vector<double>& freq) override {
    double top = 0;
    for (double f : freq) top = std::max(top, f);
    preload_top(cache, freq, [&](int i, double f) {
      count_[i] = f / (top + 1.0);
      return key(i / n_expert_, i % n_expert_);
    });
  }

 private:
  std::vector<double> count_, last_;
};

// Belady with bypass: key = -(step of next use); admit only what returns before the victim.
class OraclePolicy final : public Policy {
 public:
  const char* name() const override { return "oracle"; }
  MissMode miss_mode() const override { return MissMode::kSchedule; }
  bool needs_future() const override { return true; }
  void reset(int n_layer, int n_expert, int top_k, const CostModel& cost) override {
    Policy::reset(n_layer, n_expert, top_k, cost);
    next_.assign(static_cast<std::size_t>(n_layer) * n_expert, kNoNextUse);
  }
  void on_access(const Access& a) override { next_[a.layer * n_expert_ + a.expert] = a.next_use; }
  double key(int l, int e) const override { return -static_cast<double>(next_[l * n_expert_ + e]); }
  bool admit(const ExpertCache& cache, int l, int e, int victim, int64_t, double) const override {
    const int64_t mine = next_[l * n_expert_ + e];
    if (mine == kNoNextUse) return false;
    if (victim < 0) return true;
    return mine < next_[cache.slot_layer(victim) * n_expert_ + cache.slot_expert(victim)];
  }

 private:
  std::vector<int64_t> next_;
};

}  // namespace

const std::vector<std::string>& policy_names() {
  static const std::vector<std::string> names = {"cpu",       "static", "lru",   "lfu",
                                                 "lru-fetch", "value",  "oracle"};
  return names;
}

std::unique_ptr<Policy> make_policy(const std::string& name, const ValueParams& vp) {
  if (name == "cpu") return std::make_unique<CpuPolicy>();
  if (name == "static") return std::make_unique<StaticPolicy>();
  if (name == "lru") return std::make_unique<LruPolicy>(false);
  if (name == "lru-fetch") return std::make_unique<LruPolicy>(true);
  if (name == "lfu") return std::make_unique<LfuPolicy>();
  if (name == "value") return make_value_policy(vp);
  if (name == "oracle") return std::make_unique<OraclePolicy>();
  std::string all;
  for (const auto& n : policy_names()) all += (all.empty() ? "" : ", ") + n;
  HM_CHECK(false, "unknown policy '", name, "': expected one of ", all);
}

}  // namespace hm
