#include "core/simulator.h"

#include <algorithm>
#include <cmath>

#include "core/expert_cache.h"
#include "core/scheduler.h"

namespace hm {

void TraceView::validate() const {
  HM_CHECK(n_layer >= 1 && n_expert >= 1 && top_k >= 1 && top_k <= n_expert,
           "trace needs n_layer >= 1 and 1 <= top_k <= n_expert, got n_layer=", n_layer,
           " n_expert=", n_expert, " top_k=", top_k);
  HM_CHECK(n_steps >= 1, "trace must have at least one step, got ", n_steps);
  HM_CHECK(ids && weights && step_offsets && phase, "trace arrays must not be null");
  HM_CHECK(step_offsets[0] == 0 && step_offsets[n_steps] == n_tokens,
           "step_offsets must start at 0 and end at n_tokens = ", n_tokens);
  for (int64_t s = 0; s < n_steps; ++s) {
    HM_CHECK(step_offsets[s + 1] > step_offsets[s], "step ", s, " has no tokens");
    HM_CHECK(phase[s] == 0 || phase[s] == 1, "phase must be 0 or 1, got ", int(phase[s]),
             " at step ", s);
  }
  const int64_t n = n_tokens * n_layer * top_k;
  for (int64_t i = 0; i < n; ++i)
    if (!computed || computed[i / top_k])
      HM_CHECK(ids[i] >= 0 && ids[i] < n_expert, "expert id must be in [0, ", n_expert, "), got ",
               ids[i], " at flat index ", i);
}

namespace {

struct Rng {  // xorshift64*: the predictor's errors, reproducible by seed
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = p * static_cast<double>(v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

SimResult simulate(const TraceView& tr, const HardwareProfile& profile, const ExpertLayout& layout,
                   const SimConfig& cfg) {
  tr.validate();
  HM_CHECK(cfg.predictor_accuracy >= 0 && cfg.predictor_accuracy <= 1,
           "predictor_accuracy must be in [0, 1], got ", cfg.predictor_accuracy);
  const int L = tr.n_layer, E = tr.n_expert, K = tr.top_k;
  CostModel cost(profile, layout);
  auto policy = make_policy(cfg.policy, cfg.value);
  ExpertCache cache(L, E, policy->uses_cache() ? cfg.n_slots : 0, /*simulated_clock=*/true);
  if (policy->uses_cache())
    HM_CHECK(cfg.n_slots >= K, "budget of ", cfg.n_slots, " slots is smaller than top_k = ", K,
             ": policy '", cfg.policy, "' needs at least top_k slots");
  Scheduler sched(cache, *policy, cost, K);

  // Frequency profile (static) and next uses (oracle), computed once before the replay.
  const std::size_t LE = static_cast<std::size_t>(L) * E;
  if (!cfg.static_profile.empty()) {
    HM_CHECK(cfg.static_profile.size() == LE, "static_profile must have n_layer * n_expert = ", LE,
             " entries, got ", cfg.static_profile.size());
    for (double f : cfg.static_profile)
      HM_CHECK(f >= 0 && std::isfinite(f), "static_profile entries must be finite and >= 0, got ",
               f);
  }
  if (std::string(policy->name()) == "static") {
    if (cfg.static_profile.empty()) {
      std::vector<double> freq(LE, 0.0);
      for (int64_t i = 0; i < tr.n_tokens * L * K; ++i)
        if (!tr.computed || tr.computed[i / K]) freq[(i / K) % L * E + tr.ids[i]] += 1.0;
      policy->warm_start(cache, freq);
    } else {
      policy->warm_start(cache, cfg.static_profile);
    }
  } else if (cfg.warm_start && policy->uses_cache() && !cfg.static_profile.empty()) {
    policy->warm_start(cache, cfg.static_profile);
  }
  std::vector<int64_t> next_use;  // [n_tokens * L * K] step of the next use of that (layer, expert)
  if (policy->needs_future()) {
    next_use.assign(static_cast<std::size_t>(tr.n_tokens) * L * K, kNoNextUse);
    std::vector<int64_t> last(LE, kNoNextUse);
    for (int64_t s = tr.n_steps - 1; s >= 0; --s) {
      const int64_t a = tr.step_offsets[s] * L * K, b = tr.step_offsets[s + 1] * L * K;
      for (int64_t i = a; i < b; ++i) next_use[i] = last[(i / K) % L * E + tr.ids[i]];
      for (int64_t i = a; i < b; ++i)
        if (!tr.computed || tr.computed[i / K]) last[(i / K) % L * E + tr.ids[i]] = s;
    }
  }

  SimResult r;
  r.policy = cfg.policy;
  r.n_slots = cache.n_slots();
  r.layers.assign(L, SimLayerStats());
  // Scratch, sized once.
  std::vector<int> count(E, 0), touched;
  std::vector<float> wsum(E, 0.f);
  std::vector<int64_t> nu(E, kNoNextUse);
  std::vector<Selected> sel;
  std::vector<int> hints;
  std::vector<uint8_t> hint_seen(E, 0);
  touched.reserve(E);
  sel.reserve(E);
  hints.reserve(E);
  LayerPlan plan;
  plan.experts.reserve(E);
  plan.copies.reserve(4 * E);
  plan.pinned.reserve(2 * E);
  int64_t n_decode = 0;
  for (int64_t s = 0; s < tr.n_steps; ++s) n_decode += tr.phase[s] == 1;
  r.step_latency_us.reserve(n_decode);
  Rng rng(cfg.seed);
  const bool prefetch = policy->wants_prefetch() && cfg.predictor_accuracy > 0;
  const double bytes = static_cast<double>(cost.expert_bytes());

  double t = 0, copy_free = 0;
  for (int64_t s = 0; s < tr.n_steps; ++s) {
    const int64_t a = tr.step_offsets[s], b = tr.step_offsets[s + 1];
    const bool decode = tr.phase[s] == 1;
    const double step_start = t;
    for (int l = 0; l < L; ++l) {
      // Distinct experts of this layer in this step, with token counts and summed weights.
      touched.clear();
      for (int64_t tok = a; tok < b; ++tok) {
        if (tr.computed && !tr.computed[tok * L + l]) continue;
        const int64_t base = (tok * L + l) * K;
        for (int j = 0; j < K; ++j) {
          const int e = tr.ids[base + j];
          if (count[e]++ == 0) {
            touched.push_back(e);
            wsum[e] = 0.f;
            if (!next_use.empty()) nu[e] = next_use[base + j];
          }
          wsum[e] += tr.weights[base + j];
        }
      }
      sel.clear();
      for (int e : touched) {
        Selected x;
        x.expert = e;
        x.n_tokens = count[e];
        x.weight = wsum[e];
        x.next_use = next_use.empty() ? kNoNextUse : nu[e];
        sel.push_back(x);
        count[e] = 0;
      }
      // Next-layer hints: each true expert of layer l + 1 survives with the predictor's accuracy,
      // else a random other expert stands in (a wrong prediction).
      hints.clear();
      if (prefetch && decode && l + 1 < L) {
        const int64_t base = (a * L + l + 1) * K;
        for (int j = 0; j < K; ++j) {
          int e = tr.ids[base + j];
          if (rng.uniform() >= cfg.predictor_accuracy) e = static_cast<int>(rng.next() % E);
          if (!hint_seen[e]) {
            hint_seen[e] = 1;
            hints.push_back(e);
          }
        }
        for (int e : hints) hint_seen[e] = 0;
      }
      PlanInput in;
      in.layer = l;
      in.step = s;
      in.selected = sel.data();
      in.n_selected = static_cast<int>(sel.size());
      in.queues.now = t + cost.layer_fixed();
      in.queues.cpu_free = in.queues.gpu_free = in.queues.now;
      in.queues.copy_free = copy_free;
      in.hints = hints.data();
      in.n_hints = static_cast<int>(hints.size());
      in.hint_probability = cfg.predictor_accuracy;
      in.decode = decode && cfg.runtime_decode;
      sched.plan_layer(in, plan);
      copy_free = plan.copy_free;
      double end = std::max(plan.timing.finish, in.queues.now);
      if (decode) {
        // The live decode path (cost_model.h): the GPU hand-off of a layer with GPU experts, and
        // the part of each copy issued now that the step cannot overlap.
        if (plan.timing.n_gpu > 0) end += cost.decode_gpu_layer();
        end += cost.t_copy_stall() * static_cast<double>(plan.copies.size());
      }
      SimLayerStats& ls = r.layers[l];
      ls.time_us += end - t;
      t = end;
      const int n_copies = static_cast<int>(plan.copies.size());
      r.copy_bytes += bytes * n_copies;
      r.copy_busy_us += plan.timing.copy_busy + (n_copies - plan.n_demand) * cost.t_copy();
      r.cpu_busy_us += plan.timing.cpu_busy;
      r.gpu_busy_us += plan.timing.gpu_busy;
      r.demand_copies += plan.n_demand;
      r.prefetch_copies += plan.n_prefetch;
      r.admit_copies += plan.n_admit;
      r.staging_copies += plan.n_staging;
      if (decode) {
        ls.selections += in.n_selected;
        ls.hits += plan.n_hit;
        ls.in_flight += plan.n_in_flight;
        r.copy_bytes_per_token += bytes * n_copies;
        r.cpu_experts += plan.timing.n_cpu;
        r.gpu_experts += plan.timing.n_gpu;
      }
      sched.release(plan);
      ++r.layer_steps;
    }
    if (decode) {
      r.step_latency_us.push_back(t - step_start);
      r.decode_time_us += t - step_start;
      r.decode_tokens += b - a;
      ++r.decode_steps;
    } else {
      r.prefill_time_us += t - step_start;
      r.prefill_tokens += b - a;
      ++r.prefill_steps;
    }
  }
  for (const auto& ls : r.layers) {
    r.selections += ls.selections;
    r.hits += ls.hits;
    r.in_flight += ls.in_flight;
  }
  r.hit_rate = r.selections ? static_cast<double>(r.hits + r.in_flight) / r.selections : 0.0;
  r.copy_bytes_per_token = r.decode_tokens ? r.copy_bytes_per_token / r.decode_tokens : 0.0;
  r.tokens_per_s = r.decode_time_us > 0 ? r.decode_tokens / (r.decode_time_us * 1e-6) : 0.0;
  if (!r.step_latency_us.empty()) {
    double sum = 0;
    for (double x : r.step_latency_us) sum += x;
    r.latency_mean_us = sum / r.step_latency_us.size();
    r.latency_p50_us = percentile(r.step_latency_us, 0.5);
    r.latency_p99_us = percentile(r.step_latency_us, 0.99);
  }
  const double total = t > 0 ? t : 1.0;
  r.cpu_busy = r.cpu_busy_us / total;
  r.gpu_busy = r.gpu_busy_us / total;
  r.copy_busy = r.copy_busy_us / total;
  return r;
}

}  // namespace hm
