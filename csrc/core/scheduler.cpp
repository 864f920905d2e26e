#include "core/scheduler.h"

#include <algorithm>

namespace hm {

Scheduler::Scheduler(ExpertCache& cache, Policy& policy, const CostModel& cost, int top_k)
    : cache_(cache), policy_(policy), cost_(cost) {
  HM_CHECK(top_k >= 1 && top_k <= cache.n_expert(),
           "top_k must be in [1, n_expert = ", cache.n_expert(), "], got ", top_k);
  if (policy.uses_cache())
    HM_CHECK(cache.n_slots() >= top_k, "budget of ", cache.n_slots(),
             " slots is smaller than top_k = ", top_k, ": policy '", policy.name(),
             "' needs at least top_k slots (one layer's experts)");
  policy_.reset(cache.n_layer(), cache.n_expert(), top_k, cost);
  items_.reserve(cache.n_expert());
  order_.reserve(cache.n_expert());
  hint_pins_.reserve(cache.n_expert());
}

// A slot for (layer, expert): free, else the lowest-key evictable one if the policy admits the
// expert in its place. Fills the request's slot and victim; returns the slot or -1.
int Scheduler::take_slot(double now, int layer, int expert, int64_t step, double imminent,
                         CopyRequest& req) {
  int slot = cache_.free_slot();
  if (slot < 0) slot = cache_.choose_victim(now);
  if (slot < 0 ||
      !policy_.admit(cache_, layer, expert, cache_.state(slot) == SlotState::kFree ? -1 : slot,
                     step, imminent))
    return -1;
  req.slot = slot;
  if (cache_.state(slot) != SlotState::kFree) {
    req.victim_layer = cache_.slot_layer(slot);
    req.victim_expert = cache_.slot_expert(slot);
  }
  return slot;
}

void Scheduler::plan_layer(const PlanInput& in, LayerPlan& out) {
  const int L = cache_.n_layer(), E = cache_.n_expert();
  HM_CHECK(in.layer >= 0 && in.layer < L, "layer must be in [0, ", L, "), got ", in.layer);
  HM_CHECK(in.n_selected >= 0 && in.n_selected <= E, "n_selected must be in [0, ", E, "], got ",
           in.n_selected);
  HM_CHECK(out.pinned.empty(), "plan_layer: the previous plan in `out` was not released");
  const double now = in.queues.now;
  out.layer = in.layer;
  out.step = in.step;
  out.experts.clear();
  out.copies.clear();
  out.n_hit = out.n_in_flight = out.n_miss = 0;
  out.n_demand = out.n_prefetch = out.n_admit = out.n_staging = 0;
  items_.clear();

  const MissMode mode = policy_.miss_mode();
  const bool cached = policy_.uses_cache();
  const double t_cpu1 = cost_.t_cpu(1), t_gpu1 = cost_.t_gpu(1), t_copy = cost_.t_copy();
  for (int j = 0; j < in.n_selected; ++j) {
    const Selected& s = in.selected[j];
    HM_CHECK(s.expert >= 0 && s.expert < E, "expert id must be in [0, ", E, "), got ", s.expert);
    HM_CHECK(s.n_tokens >= 1, "n_tokens must be >= 1, got ", s.n_tokens);
    Access a;
    a.layer = in.layer;
    a.expert = s.expert;
    a.weight = s.weight;
    a.n_tokens = s.n_tokens;
    a.step = in.step;
    a.tick = in.step * L + in.layer;
    a.next_use = s.next_use;
    policy_.on_access(a);

    PlannedExpert pe;
    pe.expert = s.expert;
    pe.n_tokens = s.n_tokens;
    pe.weight = s.weight;
    SplitItem it;
    if (s.n_tokens == 1) {  // decode: the one-token costs, computed once per plan
      it.t_cpu = t_cpu1;
      it.t_gpu = t_gpu1;
    } else {
      it.t_cpu = cost_.t_cpu(s.n_tokens);
      it.t_gpu = cost_.t_gpu(s.n_tokens);
    }
    it.t_copy = t_copy;
    const int slot = cached ? cache_.lookup(in.layer, s.expert) : -1;
    if (slot >= 0) {
      cache_.set_key(slot, policy_.key(in.layer, s.expert));
      cache_.pin(slot);
      out.pinned.push_back(slot);
      pe.slot = slot;
      if (cache_.is_ready(slot, now)) {
        pe.hit = true;
        ++out.n_hit;
        it.choice = Choice::kForceGpu;
        it.ready = now;
      } else {
        pe.in_flight = true;
        ++out.n_in_flight;
        it.choice = Choice::kFree;
        it.ready = std::max(now, cache_.ready_at(slot));
      }
    } else {
      ++out.n_miss;
      it.needs_copy = true;
      it.choice = !cached || mode == MissMode::kCpu || mode == MissMode::kCpuAdmit || in.decode
                      ? Choice::kForceCpu
                  : mode == MissMode::kFetch ? Choice::kForceGpu
                                             : Choice::kFree;
    }
    out.experts.push_back(pe);
    items_.push_back(it);
  }
  const int n = static_cast<int>(items_.size());
  out.timing = splitter_.split(items_.data(), n, in.queues, cost_.gpu_layer_overhead());
  double copy_free = out.timing.copy_free;

  // Pin the predicted next-layer experts already cached, so that neither this layer's fetches nor
  // the prefetches evict what the next layer is about to use; unpinned before returning.
  const bool use_hints = cached && policy_.wants_prefetch() && in.n_hints > 0 && in.layer + 1 < L;
  hint_pins_.clear();
  if (use_hints) {
    for (int h = 0; h < in.n_hints; ++h) {
      HM_CHECK(in.hints[h] >= 0 && in.hints[h] < E, "hint expert id must be in [0, ", E, "), got ",
               in.hints[h]);
      const int slot = cache_.lookup(in.layer + 1, in.hints[h]);
      if (slot >= 0) {
        cache_.pin(slot);
        hint_pins_.push_back(slot);
      }
    }
  }

  // Demand fetches, in the copy order the split assumed (ascending completion).
  order_.clear();
  for (int i = 0; i < n; ++i) {
    out.experts[i].where = items_[i].where;
    if (items_[i].where != Where::kFetch) {
      if (items_[i].where == Where::kCpu) out.experts[i].slot = -1;
      continue;
    }
    order_.push_back(i);
  }
  std::sort(order_.begin(), order_.end(),
            [this](int a, int b) { return items_[a].fetch_ready < items_[b].fetch_ready; });
  for (int i : order_) {
    CopyRequest req;
    req.kind = CopyKind::kDemand;
    req.layer = in.layer;
    req.expert = out.experts[i].expert;
    req.ready = items_[i].fetch_ready;
    req.start = req.ready - items_[i].t_copy;
    const int slot = take_slot(now, in.layer, req.expert, in.step, 0.0, req);
    if (slot >= 0) {
      cache_.begin_load(slot, in.layer, req.expert, req.ready, policy_.key(in.layer, req.expert));
      cache_.pin(slot);
      out.pinned.push_back(slot);
    } else {
      ++out.n_staging;
    }
    out.experts[i].slot = slot;
    out.copies.push_back(req);
    ++out.n_demand;
  }

  // Background copies use only the copy engine's idle time before the layer ends.
  const double horizon = out.timing.finish;
  const double saved1 = std::max(t_cpu1 - t_gpu1, 1e-9);  // us a one-token hit saves
  auto background = [&](CopyKind kind, int layer, int expert, double imminent) {
    if (copy_free >= horizon) return false;
    CopyRequest req;
    req.kind = kind;
    req.layer = layer;
    req.expert = expert;
    req.start = std::max(now, copy_free);
    req.ready = req.start + t_copy;
    if (kind == CopyKind::kPrefetch) {
      // A prefetch saves its imminent use only by what is left after waiting for it: when the
      // copy ends `late` us after the next layer's plan and that layer's CPU has m other misses
      // to run (m: this layer's CPU count, a proxy), the layer ends at max(m t_cpu, late + t_gpu)
      // instead of (m + 1) t_cpu.
      const double late = std::max(0.0, req.ready - (horizon + cost_.layer_fixed()));
      const double m = out.timing.n_cpu;
      const double gain = std::min(saved1, (m + 1) * t_cpu1 - std::max(m * t_cpu1, late + t_gpu1));
      imminent *= std::max(0.0, gain) / saved1;
    }
    const int slot = take_slot(now, layer, expert, in.step, imminent, req);
    if (slot < 0) return true;  // not admitted: the engine stays free for the next candidate
    cache_.begin_load(slot, layer, expert, req.ready, policy_.key(layer, expert));
    copy_free = req.ready;
    out.copies.push_back(req);
    kind == CopyKind::kPrefetch ? ++out.n_prefetch : ++out.n_admit;
    return true;
  };

  if (use_hints) {
    for (int h = 0; h < in.n_hints; ++h) {
      if (cache_.lookup(in.layer + 1, in.hints[h]) >= 0) continue;
      if (!background(CopyKind::kPrefetch, in.layer + 1, in.hints[h], in.hint_probability)) break;
    }
  }
  if (cached && (mode == MissMode::kCpuAdmit || mode == MissMode::kSchedule ||
                 (in.decode && mode == MissMode::kFetch))) {
    for (int i = 0; i < n; ++i) {
      if (items_[i].where != Where::kCpu || !items_[i].needs_copy) continue;
      if (cache_.lookup(in.layer, out.experts[i].expert) >= 0) continue;
      if (!background(CopyKind::kAdmit, in.layer, out.experts[i].expert, 0.0)) break;
    }
  }
  for (int slot : hint_pins_) cache_.unpin(slot);
  hint_pins_.clear();
  out.copy_free = copy_free;
}

void Scheduler::release(LayerPlan& plan) {
  for (int slot : plan.pinned) cache_.unpin(slot);
  plan.pinned.clear();
}

}  // namespace hm
