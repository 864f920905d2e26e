// Runtime: registration, start-up, the shared planning step and the CPU path (runtime.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/q8_rows16.h"
#include "cpu/isa.h"
#include "cpu/stream_buffer.h"
#include "runtime/runtime_internal.h"

namespace hm::runtime {

namespace {

// The checks shared by the constructor and reconfigure().
void validate_options(const RuntimeOptions& opt) {
  HM_CHECK(opt.policy != "oracle",
           "policy 'oracle' needs the future (Belady) and exists only in the simulator: choose one "
           "of cpu, static, lru, lfu, lru-fetch, value");
  const auto& names = policy_names();
  HM_CHECK(std::find(names.begin(), names.end(), opt.policy) != names.end(), "unknown policy '",
           opt.policy, "': expected one of cpu, static, lru, lfu, lru-fetch, value");
  opt.profile.validate();
  const int n_budgets =
      (opt.budget_fraction >= 0) + (opt.budget_bytes >= 0) + (opt.budget_slots >= 0);
  HM_CHECK(n_budgets == 1, "give exactly one budget (fraction, bytes or slots), got ", n_budgets);
  HM_CHECK(opt.budget_fraction <= 1.0, "budget fraction must be in [0, 1], got ",
           opt.budget_fraction);
  HM_CHECK(opt.n_layers >= 0, "n_layers must be >= 0 (0: known at the first forward), got ",
           opt.n_layers);
  HM_CHECK(opt.decode_max_tokens >= 1 && opt.decode_max_tokens <= 4096,
           "decode_max_tokens must be in [1, 4096], got ", opt.decode_max_tokens);
  HM_CHECK(opt.hint_probability >= 0 && opt.hint_probability <= 1,
           "hint_probability must be in [0, 1], got ", opt.hint_probability);
  HM_CHECK(opt.threads >= 0, "threads must be >= 0 (0: default), got ", opt.threads);
}

}  // namespace

Runtime::Runtime(const RuntimeOptions& opt)
    : opt_(opt), device_(opt.device), t0_(Clock::now()), timeline_(t0_) {
  validate_options(opt);
  hint_acc_ = opt.hint_probability;
  int threads = opt.threads;
  if (threads == 0 && device_ >= 0 && std::getenv("HYBRID_MOE_THREADS") == nullptr) {
    // With a GPU, two cores stay free: the planner thread spins on one while decode steps come,
    // the caller (Python, the CUDA driver's threads, the copy thread) uses the other. Pinned
    // workers on every core starved them (bench/RESULTS.md, decode timeline).
    threads = std::max(1, cpu::physical_cores() - 2);
  }
  if (device_ >= 0) {
    pool_ = &cpu::shared_pool(threads);  // forward_cpu's caller computes on a free core
  } else {  // `threads` in all: the caller of forward_cpu and threads - 1 workers
    const cpu::CallerPool cp = cpu::caller_pool(threads);
    pool_ = cp.pool;
    cpu_caller_helps_ = cp.caller_helps;
  }
  if (opt.n_layers > 0) layers_.resize(static_cast<std::size_t>(opt.n_layers));
  if (device_ >= 0) init_gpu();
}

Runtime::~Runtime() {
  // The device first (the planner thread serves queued steps, then stops); then the CPU jobs
  // still running read our buffers: join them before anything is freed.
  if (device_ >= 0) stop_gpu();
  for (auto& c : layers_) {
    if (!c || !c->job.valid()) continue;
    try {
      c->job.wait();
    } catch (...) {
    }
  }
}

void Runtime::check_layer(int layer) const {
  const int n = started_ ? n_layers_ : static_cast<int>(layers_.size());
  HM_CHECK(layer >= 0 && layer < n, "layer_idx must be in [0, ", n, "), got ", layer);
  HM_CHECK(layers_[layer] && layers_[layer]->registered, "layer ", layer,
           " has no experts registered (build its HybridMoELayer first)");
}

Runtime::LayerCtx& Runtime::ctx(int layer) {
  check_layer(layer);
  return *layers_[static_cast<std::size_t>(layer)];
}

bool Runtime::layer_registered(int layer) const {
  return layer >= 0 && layer < static_cast<int>(layers_.size()) && layers_[layer] &&
         layers_[layer]->registered;
}

void Runtime::register_layer(int layer, WeightFormat f, int64_t hidden, int64_t intermediate,
                             int n_expert, int top_k, const uint8_t* packed) {
  HM_CHECK(!started_, "layer ", layer,
           " registered after the runtime started (its first forward): "
           "build every HybridMoELayer before running any, or pass n_layers to Runtime");
  HM_CHECK(layer >= 0, "layer_idx must be >= 0, got ", layer);
  HM_CHECK(opt_.n_layers == 0 || layer < opt_.n_layers,
           "layer_idx must be in [0, n_layers = ", opt_.n_layers, "), got ", layer);
  HM_CHECK(n_expert >= 1, "n_expert must be >= 1, got ", n_expert);
  HM_CHECK(top_k >= 1 && top_k <= n_expert, "top_k must be in [1, n_expert = ", n_expert, "], got ",
           top_k);
  HM_CHECK(packed != nullptr, "packed expert bytes must not be null");
  // Host rows: GGUF, or Q8_0 in groups of 16 for the CPU kernels (the mover converts copies
  // back to GGUF rows for the GPU); `packed` always holds GGUF rows.
  const ExpertLayout l = make_expert_layout(f, hidden, intermediate, cpu::host_row_packing(f));
  if (have_layout_) {
    HM_CHECK(l.format == layout_.format && l.hidden == layout_.hidden &&
                 l.intermediate == layout_.intermediate,
             "layer ", layer, ": every layer must share one expert format and shape: expected ",
             format_name(layout_.format), " H=", layout_.hidden, " I=", layout_.intermediate,
             ", got ", format_name(f), " H=", hidden, " I=", intermediate);
    HM_CHECK(n_expert == n_expert_, "layer ", layer, ": n_expert must be ", n_expert_, ", got ",
             n_expert);
    HM_CHECK(top_k == top_k_, "layer ", layer, ": top_k must be ", top_k_, ", got ", top_k);
  }
  if (layer >= static_cast<int>(layers_.size()))
    layers_.resize(static_cast<std::size_t>(layer) + 1);
  HM_CHECK(!layers_[layer] || !layers_[layer]->registered, "layer ", layer,
           " is already registered (duplicate layer_idx)");
  if (!have_layout_) {
    layout_ = l;
    n_expert_ = n_expert;
    top_k_ = top_k;
    have_layout_ = true;
  }
  if (!layers_[layer]) layers_[layer] = std::make_unique<LayerCtx>();
  layers_[layer]->layer = layer;
  fill_host_store(layer, packed);
  layers_[layer]->registered = true;
}

void Runtime::fill_host_store(int layer, const uint8_t* packed) {
  LayerCtx& c = *layers_[layer];
  if (device_ >= 0 && gpu_fill(layer, packed)) return;  // straight into the pinned store
  const std::size_t bytes = static_cast<std::size_t>(n_expert_) * layout_.stride;
  // Huge-page advised (cpu/stream_buffer.h): the CPU kernels stream these experts every step.
  uint8_t* p = nullptr;
  try {
    p = cpu::alloc_stream_buffer(bytes).release();
  } catch (const RuntimeError&) {
    HM_CHECK_RT(false, "out of host memory for layer ", layer, "'s experts (", bytes, " bytes)");
  }
  // First touch, after the advice; on the pool (a Q8_0 repack into groups of 16 rows runs ~1 GB/s
  // per core).
  pool_->parallel_for(n_expert_, [&](int64_t e) {
    const std::size_t off = static_cast<std::size_t>(e) * layout_.stride;
    store_expert_from_gguf(layout_, packed + off, p + off);
  });
  c.host.reset(p);
  c.expert_ptrs.resize(static_cast<std::size_t>(n_expert_));
  for (int e = 0; e < n_expert_; ++e)
    c.expert_ptrs[e] = p + static_cast<std::size_t>(e) * layout_.stride;
}

void Runtime::start() {
  if (started_) return;
  HM_CHECK(have_layout_, "no layer registered: build the model's HybridMoELayers first");
  n_layers_ = opt_.n_layers > 0 ? opt_.n_layers : static_cast<int>(layers_.size());
  for (int l = 0; l < n_layers_; ++l)
    HM_CHECK(layer_registered(l), "layer ", l, " of ", n_layers_,
             " was never registered: every layer in [0, n_layers) needs a HybridMoELayer");
  for (auto& c : layers_) {
    c->sel_index.assign(static_cast<std::size_t>(n_expert_), -1);
    c->gpu_slot_of.assign(static_cast<std::size_t>(n_expert_), -1);
    c->predicted.assign(static_cast<std::size_t>(n_expert_), 0);
    c->selected.reserve(static_cast<std::size_t>(n_expert_));
  }
  make_engine();
  if (device_ >= 0) {
    start_gpu();
    start_engine_gpu();
  }
  describe_host_store();
  started_ = true;
}

void Runtime::describe_host_store() {
  cpu::PageRanges ranges;
  std::string kind = "heap, huge-page advised";
#if HYBRID_MOE_WITH_CUDA
  if (gpu_ && gpu_->store) {
    ranges.emplace_back(gpu_->store->data(), gpu_->store->nbytes());
    kind = gpu_->store->backing();
  }
#endif
  if (ranges.empty()) {
    if (!cpu::stream_hugepages()) kind = "heap (HYBRID_MOE_HUGEPAGES=0)";
    for (int l = 0; l < n_layers_; ++l)
      if (layers_[l]->host)
        ranges.emplace_back(layers_[l]->host.get(),
                            static_cast<std::size_t>(n_expert_) * layout_.stride);
  }
  std::size_t bytes = 0;
  for (const auto& r : ranges) bytes += r.second;
  const std::size_t huge = cpu::huge_page_bytes(ranges);
  char buf[160];
  const bool gb = bytes >= 1000000000;
  std::snprintf(buf, sizeof buf, "%s; %.0f%% of %.1f %s on huge pages", kind.c_str(),
                bytes ? 100.0 * static_cast<double>(huge) / static_cast<double>(bytes) : 0.0,
                static_cast<double>(bytes) / (gb ? 1e9 : 1e6), gb ? "GB" : "MB");
  host_store_ = buf;
}

void Runtime::make_engine() {
  const int64_t total = static_cast<int64_t>(n_layers_) * n_expert_;
  int64_t slots = 0;
  if (device_ >= 0 && opt_.policy != "cpu") {
    if (opt_.budget_fraction >= 0)
      slots =
          static_cast<int64_t>(std::ceil(opt_.budget_fraction * static_cast<double>(total) - 1e-9));
    else if (opt_.budget_bytes >= 0)
      slots = opt_.budget_bytes / static_cast<int64_t>(layout_.stride);
    else
      slots = opt_.budget_slots;
    slots = std::min(slots, total);
  }
  HM_CHECK(slots == 0 || slots >= top_k_, "budget of ", slots, " expert slots (",
           slots * layout_.stride, " bytes) cannot hold one layer's top_k = ", top_k_,
           " experts: give 0 (every expert on the CPU) or at least ", top_k_, " slots (",
           top_k_ * layout_.stride, " bytes)");
  HM_CHECK(opt_.frequency.empty() || static_cast<int64_t>(opt_.frequency.size()) == total,
           "frequency must hold n_layers * n_expert = ", total, " counts, got ",
           opt_.frequency.size());
  auto cost = std::make_unique<CostModel>(opt_.profile, layout_);
  auto cache = std::make_unique<ExpertCache>(n_layers_, n_expert_, static_cast<int>(slots),
                                             /*simulated_clock=*/false);
  auto policy = make_policy(slots == 0 ? "cpu" : opt_.policy, opt_.value);
  auto sched = std::make_unique<Scheduler>(*cache, *policy, *cost, top_k_);
  if (slots > 0 && opt_.policy == "static") {
    std::vector<double> freq = opt_.frequency;
    if (freq.empty()) freq.assign(static_cast<std::size_t>(total), 1.0);
    policy->warm_start(*cache, freq);  // preloads; start_engine_gpu() copies them in
  } else if (slots > 0 && !opt_.frequency.empty()) {
    policy->warm_start(*cache, opt_.frequency);  // the other caching policies start from it
  }
  // Everything checked and built: commit (the scheduler refers to cache, policy and cost).
  sched_.reset();
  policy_ = std::move(policy);
  cache_ = std::move(cache);
  cost_ = std::move(cost);
  sched_ = std::move(sched);
  n_slots_ = static_cast<int>(slots);
  visits_ = 0;
  copy_free_ = 0;
  hint_acc_ = opt_.hint_probability;
  pending_drop_.clear();
  for (auto& c : layers_) {
    c->steps = 0;
    c->plan_live = false;
    c->have_predicted = false;
    c->acquired = false;
    std::fill(c->predicted.begin(), c->predicted.end(), 0);
    c->stats = LayerStats();
  }
}

void Runtime::quiesce() {
  if (device_ >= 0) quiesce_gpu();
  for (auto& c : layers_) {
    if (!c || !c->job.valid()) continue;
    try {
      c->job.wait();
    } catch (...) {
    }
    c->job = cpu::JobHandle();
  }
}

void Runtime::reconfigure(const RuntimeOptions& o) {
  validate_options(o);
  HM_CHECK(o.device == opt_.device, "reconfigure cannot change the device (", opt_.device, " -> ",
           o.device, "): build a new Runtime");
  HM_CHECK(o.threads == opt_.threads, "reconfigure cannot change the thread count (", opt_.threads,
           " -> ", o.threads, ")");
  HM_CHECK(o.decode_max_tokens == opt_.decode_max_tokens,
           "reconfigure cannot change decode_max_tokens (", opt_.decode_max_tokens, " -> ",
           o.decode_max_tokens, ")");
  HM_CHECK(o.n_layers == 0 || o.n_layers == (started_ ? n_layers_ : opt_.n_layers),
           "reconfigure cannot change n_layers");
  check_error();
  RuntimeOptions next = opt_;
  next.policy = o.policy;
  next.profile = o.profile;
  next.budget_fraction = o.budget_fraction;
  next.budget_bytes = o.budget_bytes;
  next.budget_slots = o.budget_slots;
  next.hint_probability = o.hint_probability;
  next.frequency = o.frequency;
  next.value = o.value;
  if (!started_) {
    opt_ = std::move(next);
    return;
  }
  quiesce();  // parks the planner thread: resume_planner() on every way out
  for (auto& c : layers_) {
    if (!c->plan_live) continue;
    resume_planner();
    HM_CHECK_RT(false, "layer ", c->layer, " has a plan in flight: reconfigure between steps");
  }
  const RuntimeOptions prev = opt_;
  if (device_ >= 0) stop_engine_gpu();
  opt_ = std::move(next);
  try {
    make_engine();
    if (device_ >= 0) start_engine_gpu();  // e.g. out of device memory for a larger budget
  } catch (...) {
    if (device_ >= 0) stop_engine_gpu();
    opt_ = prev;  // keep a working runtime: the previous configuration, rebuilt
    make_engine();
    if (device_ >= 0) start_engine_gpu();
    resume_planner();
    throw;
  }
  resume_planner();
}

void Runtime::record_error(const std::string& what) {
  std::lock_guard<std::mutex> lk(err_mu_);
  if (error_.empty()) error_ = what;
  has_error_.store(true, std::memory_order_release);
}

void Runtime::check_error() {
  if (!has_error_.load(std::memory_order_acquire)) return;
  std::string e;
  {
    std::lock_guard<std::mutex> lk(err_mu_);
    e.swap(error_);
    has_error_.store(false, std::memory_order_release);
  }
  HM_CHECK_RT(false,
              "an earlier step of the runtime failed inside a stream host function (its "
              "output is wrong): ",
              e);
}

void Runtime::plan(LayerCtx& c, int64_t T, const int32_t* ids, const float* w, const int32_t* hints,
                   int n_hints, Mode mode, PlanOut& out) {
  const int k = top_k_, E = n_expert_;
  out.cpu.clear();
  out.gpu_token.clear();
  out.gpu_slot.clear();
  out.gpu_weight.clear();
  out.wait_slots.clear();
  out.acquire_slots.clear();
  out.acquire_experts.clear();
  for (int64_t i = 0; i < T * k; ++i) {
    HM_CHECK(ids[i] >= 0 && ids[i] < E, "topk_ids must lie in [0, ", E, "), got ", ids[i],
             " at flat index ", i);
    HM_CHECK(std::isfinite(w[i]), "topk_weights must be finite, got ", w[i], " at flat index ", i);
  }
  for (int h = 0; h < n_hints; ++h)
    HM_CHECK(hints[h] >= 0 && hints[h] < E, "next-layer hint ids must lie in [0, ", E, "), got ",
             hints[h]);

  std::lock_guard<std::mutex> lk(mu_);
  drain_completions();
  HM_CHECK_RT(!c.plan_live, "layer ", c.layer, ": the previous plan was never joined");
  c.selected.clear();
  for (int64_t i = 0; i < T * k; ++i) {
    const int e = ids[i];
    if (c.sel_index[e] < 0) {
      c.sel_index[e] = static_cast<int>(c.selected.size());
      Selected s;
      s.expert = e;
      s.n_tokens = 0;
      c.selected.push_back(s);
    }
    Selected& s = c.selected[static_cast<std::size_t>(c.sel_index[e])];
    ++s.n_tokens;
    s.weight += w[i];
  }
  for (const Selected& s : c.selected) c.sel_index[s.expert] = -1;
  // Predictor accuracy: share of this step's experts that layer - 1's hints named.
  if (c.have_predicted && !c.selected.empty()) {
    int matched = 0;
    for (const Selected& s : c.selected) matched += c.predicted[s.expert];
    hint_acc_ = 0.9 * hint_acc_ + 0.1 * matched / static_cast<double>(c.selected.size());
    c.have_predicted = false;
  }
  c.hints.clear();
  if (n_hints > 0 && c.layer + 1 < n_layers_) {
    LayerCtx& next = *layers_[c.layer + 1];
    std::fill(next.predicted.begin(), next.predicted.end(), 0);
    for (int h = 0; h < n_hints; ++h)
      if (!next.predicted[hints[h]]) {
        next.predicted[hints[h]] = 1;
        c.hints.push_back(hints[h]);
      }
    next.have_predicted = true;
  }

  PlanInput in;
  in.layer = c.layer;
  in.step = c.steps++;
  in.selected = c.selected.data();
  in.n_selected = static_cast<int>(c.selected.size());
  const double now = us_between(t0_, Clock::now());
  in.queues.now = now;
  in.queues.cpu_free = now;
  in.queues.gpu_free = now;
  in.queues.copy_free = std::max(now, copy_free_);
  in.hints = c.hints.data();
  in.n_hints = static_cast<int>(c.hints.size());
  in.hint_probability = hint_acc_;
  in.decode = mode == Mode::kDecode;
  sched_->plan_layer(in, c.plan);
  c.plan_live = true;
  ++visits_;
  copy_free_ = c.plan.copy_free;

  LayerStats& st = c.stats;
  const bool gpu_ok = mode != Mode::kCpuOnly && n_slots_ > 0;
  for (const PlannedExpert& pe : c.plan.experts) {
    int slot = -1;
    if (gpu_ok && pe.where == Where::kGpu && pe.hit) slot = pe.slot;
    if (gpu_ok && pe.where == Where::kFetch && pe.slot >= 0 && mode == Mode::kPrefill) {
      slot = pe.slot;
      out.wait_slots.push_back(slot);
    }
    if (pe.where == Where::kFetch && slot < 0) ++st.decode_fetch_on_cpu;
    c.gpu_slot_of[pe.expert] = slot;
    if (slot >= 0) {
      out.acquire_slots.push_back(slot);
      out.acquire_experts.push_back(static_cast<int64_t>(c.layer) * E + pe.expert);
    }
  }
  st.hits += c.plan.n_hit;
  st.misses += c.plan.n_miss;
  st.in_flight += c.plan.n_in_flight;
  // Decode: the kernel runs right after this host function, so take the slots now.
  if (mode == Mode::kDecode && !out.acquire_slots.empty()) {
    c.plan_id = ++plan_ids_;
    c.acquired = acquire_slots(c.plan_id, out.acquire_slots, out.acquire_experts);
    if (!c.acquired) {  // residency disagreement (never expected): everything on the CPU
      for (const PlannedExpert& pe : c.plan.experts) c.gpu_slot_of[pe.expert] = -1;
      out.acquire_slots.clear();
      out.acquire_experts.clear();
    }
  }
  c.copies_pending = true;
  if (mode != Mode::kDecode) issue_copies_locked(c);
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) {
      const int e = ids[t * k + j];
      const int slot = c.gpu_slot_of[e];
      if (slot >= 0) {
        out.gpu_token.push_back(static_cast<int32_t>(t));
        out.gpu_slot.push_back(slot);
        out.gpu_weight.push_back(w[t * k + j]);
      } else {
        out.cpu.push_back({static_cast<int32_t>(t), e, w[t * k + j]});
      }
    }
  for (const PlannedExpert& pe : c.plan.experts) {
    (c.gpu_slot_of[pe.expert] >= 0 ? st.gpu_experts : st.cpu_experts)++;
    c.gpu_slot_of[pe.expert] = -1;
  }
  st.forwards += 1;
  st.tokens += T;
  st.pairs += T * k;
  st.gpu_pairs += static_cast<int64_t>(out.gpu_token.size());
  st.cpu_pairs += static_cast<int64_t>(out.cpu.size());
  st.experts += static_cast<int64_t>(c.plan.experts.size());
}

void Runtime::issue_copies(LayerCtx& c) {
  std::lock_guard<std::mutex> lk(mu_);
  issue_copies_locked(c);
}

void Runtime::issue_copies_locked(LayerCtx& c) {
  if (!c.copies_pending) return;
  c.copies_pending = false;
  LayerStats& st = c.stats;
  for (const CopyRequest& r : c.plan.copies) {
    if (r.slot < 0) continue;  // staging copy: not cached; the expert ran on the CPU instead
    (r.kind == CopyKind::kDemand     ? st.demand_copies
     : r.kind == CopyKind::kPrefetch ? st.prefetch_copies
                                     : st.admit_copies)++;
    st.copy_bytes += static_cast<int64_t>(layout_.stride);
    const uint64_t gen = r.kind == CopyKind::kPrefetch ? visits_ + 1
                         : r.kind == CopyKind::kAdmit  ? (UINT64_MAX >> 1)
                                                       : visits_;
    request_copy(static_cast<int64_t>(r.layer) * n_expert_ + r.expert, r.slot,
                 r.kind != CopyKind::kDemand, gen);
  }
}

void Runtime::release_plan(LayerCtx& c, bool cpu_waited, double cpu_us) {
  std::lock_guard<std::mutex> lk(mu_);
  issue_copies_locked(c);  // normally done already (after go); never lose a planned copy
  if (c.plan_live) {
    sched_->release(c.plan);
    c.plan_live = false;
  }
  if (!cpu_waited || c.out.cpu.empty()) return;
  c.stats.cpu_us += cpu_us;
  ++c.stats.cpu_timed;
  int n_cpu = 0;
  for (const PlannedExpert& pe : c.plan.experts) n_cpu += pe.where == Where::kCpu;
  n_cpu = std::max(n_cpu, 1);
  const int64_t tokens = std::max<int64_t>(1, static_cast<int64_t>(c.out.cpu.size()) / n_cpu);
  // The CPU runs its experts back to back: observed per expert = total / count.
  if (cpu_us > 0) cost_->refine(Resource::kCpu, tokens, cpu_us / n_cpu);
}

void Runtime::forward_cpu(int layer, int64_t T, const float* x, const int32_t* ids, const float* w,
                          const int32_t* hints, int n_hints, float* out) {
  check_error();
  start();
  LayerCtx& c = ctx(layer);
  HM_CHECK(T >= 1, "T (tokens) must be >= 1, got ", T);
  HM_CHECK(x && ids && w && out, "x, topk_ids, topk_weights and out must not be null");
  HM_CHECK(n_hints >= 0 && (n_hints == 0 || hints), "hints must be given when n_hints > 0");
  plan(c, T, ids, w, hints, n_hints, Mode::kCpuOnly, c.out);
  double us = 0;
  try {
    if (!c.out.cpu.empty()) {
      cpu::MoeLayerArgs a;
      a.layout = layout_;
      a.experts = c.expert_ptrs.data();
      a.n_experts = n_expert_;
      a.x = x;
      a.tokens = T;
      a.assignments = c.out.cpu.data();
      a.n_assignments = static_cast<int64_t>(c.out.cpu.size());
      a.out = out;
      const auto t = Clock::now();
      cpu::run_moe_layer(*pool_, a, cpu_caller_helps_);
      us = us_between(t, Clock::now());
    }
  } catch (...) {
    release_plan(c, false, 0);
    throw;
  }
  release_plan(c, true, us);
}

void Runtime::drain_completions() {
#if HYBRID_MOE_WITH_CUDA
  if (!gpu_ || !gpu_->mover) return;
  Gpu& g = *gpu_;
  {
    std::lock_guard<std::mutex> lk(g.cq_mu);
    g.cq_local.swap(g.cq);
  }
  for (const Gpu::Completion& done : g.cq_local) {
    const int slot = done.c.slot;
    if (slot < 0 || slot >= cache_->n_slots()) continue;
    const bool matches =
        cache_->state(slot) == SlotState::kLoading &&
        static_cast<int64_t>(cache_->slot_layer(slot)) * n_expert_ + cache_->slot_expert(slot) ==
            done.c.expert;
    if (done.c.status == cuda::FetchStatus::kReady) {
      if (matches) cache_->complete_load(slot);
      // Service time of the copy engine: from when it could start this copy to its completion.
      const double begin = std::max(g.request_us[slot], g.last_completion_us);
      g.last_completion_us = std::max(g.last_completion_us, done.t_us);
      if (matches && done.t_us > begin) cost_->refine(Resource::kCopy, 1, done.t_us - begin);
    } else if (matches) {
      if (cache_->pins(slot) == 0)
        cache_->evict(slot);
      else
        pending_drop_.push_back(slot);
    }
  }
  g.cq_local.clear();
  for (std::size_t i = 0; i < pending_drop_.size();) {
    const int slot = pending_drop_[i];
    if (cache_->state(slot) == SlotState::kLoading && cache_->pins(slot) == 0) cache_->evict(slot);
    if (cache_->state(slot) != SlotState::kLoading || cache_->pins(slot) == 0) {
      pending_drop_[i] = pending_drop_.back();
      pending_drop_.pop_back();
    } else {
      ++i;
    }
  }
#endif
}

std::vector<LayerStats> Runtime::layer_stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<LayerStats> out;
  for (const auto& c : layers_) out.push_back(c ? c->stats : LayerStats());
  return out;
}

void Runtime::reset_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& c : layers_)
    if (c) c->stats = LayerStats();
}

double Runtime::hint_accuracy() const {
  std::lock_guard<std::mutex> lk(mu_);
  return hint_acc_;
}

std::array<double, 3> Runtime::cost_scales() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (!cost_) return {1.0, 1.0, 1.0};
  return {cost_->scale(Resource::kCpu), cost_->scale(Resource::kGpu),
          cost_->scale(Resource::kCopy)};
}

int Runtime::resident_experts() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (!cache_) return 0;
  int n = 0;
  for (int s = 0; s < cache_->n_slots(); ++s) n += cache_->state(s) == SlotState::kResident;
  return n;
}

const uint8_t* Runtime::expert_host_ptr(int layer, int expert) const {
  return layers_[layer]->expert_ptrs[expert];
}

}  // namespace hm::runtime
