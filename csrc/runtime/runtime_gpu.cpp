// [NOTE] Runtime on the GPU (runtime.h; DESIGN.md section 3).
//
// Decode, all on the caller's stream, capturable in a CUDA graph. `out` is overwritten.
// Default (doorbells + fused hand-off, runtime_planner.cpp, cuda/decode_handoff.h):
//   stage kernel (inputs -> mapped buffers, ring ready, wait go, plan -> device memory, go = 0)
//   -> launch_decode into the fp32 accumulator -> finish kernel (ring kdone, wait done,
//   out = accumulator + partials).
// Host functions (HM_DECODE_SYNC=hostfn, or stream memory operations unavailable), and doorbells
// without the fused kernels (HM_DECODE_FUSED=0):
//   1. zero out; cudaMemcpyAsync D2H: ids, weights, x (bf16) and next-layer hints -> the layer's
//      pinned buffers
//   2. cudaLaunchHostFunc(plan_fn) (or doorbells): x -> fp32, Runtime::plan (scheduler, mover
//      requests, slot acquisition), GPU pairs -> mapped plan memory, CPU share submitted to the
//      pool
//   3. launch_decode on the mapped plan (pair count read on the device, max_pairs = T * k)
//   4. cudaLaunchHostFunc(join_fn): wait for the CPU job, release slots (mover) and pins (cache)
//   5. launch_add_partials into out (the partial sums read from mapped memory)
// Host functions make no CUDA calls. Every pointer handed to the stream is fixed per layer, and the
// host-function argument is fixed per (layer, T, hints), so replaying a captured graph re-runs the
// same sequence with fresh ids. Everything needed is allocated at start(): capture only after one
// eager step (torch's usual warm-up), and preferably with capture_error_mode="thread_local" (the
// mover thread keeps issuing copies while another thread captures).
//
// Prefill (host-driven): sync, plan with demand fetches kept on the GPU, CPU share on the pool
// while the fetches copy, wait for the fetched slots, one PrefillRunner launch over hits + fetched
// slots, join the CPU, H2D + add partials, sync, release.
#include <algorithm>
#include <cstring>

#include "core/q8_rows16.h"
#include "runtime/runtime_internal.h"
#if HYBRID_MOE_WITH_CUDA
#include "cuda/cuda_check.h"
#include "cuda/decode_handoff.h"
#endif

namespace hm::runtime {

#if HYBRID_MOE_WITH_CUDA

namespace {

inline float bf16_to_f32(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

cuda::SlabView slab_view(const cuda::DeviceSlab& s) {
  cuda::SlabView v;
  v.base = s.base();
  v.n_slots = s.n_slots();
  v.layout = s.layout();
  return v;
}

}  // namespace

void Runtime::init_gpu() {
  int n = 0;
  HM_CUDA_CHECK(cudaGetDeviceCount(&n));
  HM_CHECK(device_ < n, "device must be in [0, ", n, ") (CUDA devices present), got ", device_);
  HM_CUDA_CHECK(cudaSetDevice(device_));
  gpu_ = std::make_unique<Gpu>();
}

bool Runtime::gpu_fill(int layer, const uint8_t* packed) {
  if (opt_.n_layers == 0) return false;  // layer count unknown: staged until start()
  Gpu& g = *gpu_;
  if (!g.store)
    g.store = std::make_shared<cuda::PinnedExpertStore>(
        layout_, static_cast<int64_t>(opt_.n_layers) * n_expert_);
  LayerCtx& c = *layers_[layer];
  c.expert_ptrs.resize(static_cast<std::size_t>(n_expert_));
  for (int e = 0; e < n_expert_; ++e)
    c.expert_ptrs[e] = g.store->expert_ptr(static_cast<int64_t>(layer) * n_expert_ + e);
  pool_->parallel_for(n_expert_, [&](int64_t e) {  // Q8_0 repacks run ~1 GB/s per core
    store_expert_from_gguf(layout_, packed + static_cast<std::size_t>(e) * layout_.stride,
                           g.store->expert_ptr(static_cast<int64_t>(layer) * n_expert_ + e));
  });
  return true;
}

void Runtime::start_gpu() {
  Gpu& g = *gpu_;
  // Planner settings (A/B runs), checked before anything is allocated; set before the planner
  // thread starts.
  const auto flag = [](const char* var, bool when_unset) {
    const char* v = std::getenv(var);
    HM_CHECK(!v || std::string(v) == "0" || std::string(v) == "1", "environment variable ", var,
             "='", v, "': expected 0 or 1");
    return v ? std::string(v) == "1" : when_unset;
  };
  g.planner_helps = flag("HYBRID_MOE_PLANNER_HELPS", true);
  g.prewarm = flag("HYBRID_MOE_CPU_PREWARM", false);
  HM_CUDA_CHECK(cudaSetDevice(device_));
  const int64_t total = static_cast<int64_t>(n_layers_) * n_expert_;
  if (!g.store) {  // staged layers move into the pinned store, freeing the staging copy
    g.store = std::make_shared<cuda::PinnedExpertStore>(layout_, total);
    for (int l = 0; l < n_layers_; ++l) {
      LayerCtx& c = *layers_[l];
      for (int e = 0; e < n_expert_; ++e) {
        const int64_t ge = static_cast<int64_t>(l) * n_expert_ + e;
        g.store->fill_expert(ge, c.expert_ptrs[e], layout_.stride);
        c.expert_ptrs[e] = g.store->expert_ptr(ge);
      }
      c.host.reset();
    }
  }
  const int t_max = opt_.decode_max_tokens, k = top_k_;
  const std::size_t H = static_cast<std::size_t>(layout_.hidden);
  const std::size_t I = static_cast<std::size_t>(layout_.intermediate);
  g.prefill = std::make_unique<cuda::PrefillRunner>();
  HM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&g.d_workspace),
                           static_cast<std::size_t>(t_max) * k * I * sizeof(float)));
  const char* pc = std::getenv("HM_DECODE_PARTIALS");  // diagnostics: "copy" = H2D memcpy
  g.partials_by_copy = pc && std::string(pc) == "copy";
  g.d_partial_cap = static_cast<std::size_t>(t_max) * H;
  HM_CUDA_CHECK(
      cudaMalloc(reinterpret_cast<void**>(&g.d_partial), g.d_partial_cap * sizeof(float)));
  HM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&g.d_acc), g.d_partial_cap * sizeof(float)));
  {  // The fused hand-off's device copy of a layer's plan (one layer at a time: stream order).
    const std::size_t nk = static_cast<std::size_t>(t_max) * k;
    HM_CUDA_CHECK(cudaMalloc(&g.d_plan, (t_max + 1 + 3 * nk) * 4));
    auto* base = static_cast<int32_t*>(g.d_plan);
    g.d_plan_token_ptr = base;
    g.d_plan_pair_token = base + t_max + 1;
    g.d_plan_pair_slot = g.d_plan_pair_token + nk;
    g.d_plan_pair_weight = reinterpret_cast<float*>(g.d_plan_pair_slot + nk);
  }
  // Per layer: one pinned block (ids, weights, hints, x) and one mapped block (plan, partials).
  const std::size_t nk = static_cast<std::size_t>(t_max) * k,
                    nh = static_cast<std::size_t>(t_max) * H;
  const std::size_t n_hint_words = static_cast<std::size_t>(t_max) * std::max(k, n_expert_);
  const std::size_t pinned_bytes =
      align_up(nk * 4) * 2 + align_up(n_hint_words * 4) + align_up(nh * 2);
  const std::size_t mapped_bytes =
      align_up((t_max + 1) * 4) + align_up(nk * 4) * 3 + align_up(nh * 4);
  for (auto& cp : layers_) {
    LayerCtx& c = *cp;
    c.t_max = t_max;
    // Mapped too: the fused stage kernel writes the inputs straight into it.
    HM_CUDA_CHECK(cudaHostAlloc(&c.pinned, pinned_bytes, cudaHostAllocMapped));
    HM_CUDA_CHECK(cudaHostAlloc(&c.mapped, mapped_bytes, cudaHostAllocMapped));
    std::memset(c.mapped, 0, mapped_bytes);
    auto* p = static_cast<uint8_t*>(c.pinned);
    c.ids_h = reinterpret_cast<int32_t*>(p);
    p += align_up(nk * 4);
    c.w_h = reinterpret_cast<float*>(p);
    p += align_up(nk * 4);
    c.hints_h = reinterpret_cast<int32_t*>(p);
    p += align_up(n_hint_words * 4);
    c.hint_ids.assign(nk, 0);
    c.x_h = reinterpret_cast<uint16_t*>(p);
    c.x32.assign(nh, 0.f);
    void* dev = nullptr;
    HM_CUDA_CHECK(cudaHostGetDevicePointer(&dev, c.pinned, 0));
    {
      auto dv = [&](const void* hp) {
        return static_cast<uint8_t*>(dev) +
               (static_cast<const uint8_t*>(hp) - static_cast<const uint8_t*>(c.pinned));
      };
      c.d_ids_h = reinterpret_cast<int32_t*>(dv(c.ids_h));
      c.d_w_h = reinterpret_cast<float*>(dv(c.w_h));
      c.d_hints_h = reinterpret_cast<int32_t*>(dv(c.hints_h));
      c.d_x_h = reinterpret_cast<uint16_t*>(dv(c.x_h));
    }
    HM_CUDA_CHECK(cudaHostGetDevicePointer(&dev, c.mapped, 0));
    auto* m = static_cast<uint8_t*>(c.mapped);
    auto* d = static_cast<uint8_t*>(dev);
    std::size_t off = 0;
    c.map_token_ptr = reinterpret_cast<int32_t*>(m + off);
    c.d_token_ptr = reinterpret_cast<const int32_t*>(d + off);
    off += align_up((t_max + 1) * 4);
    c.map_pair_token = reinterpret_cast<int32_t*>(m + off);
    c.d_pair_token = reinterpret_cast<const int32_t*>(d + off);
    off += align_up(nk * 4);
    c.map_pair_slot = reinterpret_cast<int32_t*>(m + off);
    c.d_pair_slot = reinterpret_cast<const int32_t*>(d + off);
    off += align_up(nk * 4);
    c.map_pair_weight = reinterpret_cast<float*>(m + off);
    c.d_pair_weight = reinterpret_cast<const float*>(d + off);
    off += align_up(nk * 4);
    // The CPU's partial sums: the add kernel reads them over PCIe (no copy-engine queue, where
    // an H2D of a few KB would wait behind the mover's expert copies).
    c.partial_h = reinterpret_cast<float*>(m + off);
    c.d_partial_map = reinterpret_cast<const float*>(d + off);
    cudaEvent_t a = nullptr, b = nullptr;
    HM_CUDA_CHECK(cudaEventCreate(&a));
    HM_CUDA_CHECK(cudaEventCreate(&b));
    c.ev_start = a;
    c.ev_stop = b;
  }
  init_doorbells();
  const char* fz = std::getenv("HM_DECODE_FUSED");  // "0": memory operations and copies (A/B)
  g.fused = g.doorbell && !g.partials_by_copy && !(fz && std::string(fz) == "0");
}

void Runtime::start_engine_gpu() {
  Gpu& g = *gpu_;
  HM_CUDA_CHECK(cudaSetDevice(device_));
  if (n_slots_ == 0) return;
  ExpertLayout slab_layout = layout_;  // slots hold GGUF rows whatever the host store packs
  slab_layout.packing = RowPacking::kGguf;
  g.slab = std::make_shared<cuda::DeviceSlab>(slab_layout, n_slots_, device_);
  g.mover = std::make_unique<cuda::Mover>(g.store, g.slab);
  g.request_us.assign(static_cast<std::size_t>(n_slots_), 0.0);
  g.last_completion_us = 0;
  Gpu* gp = &g;
  const auto t0 = t0_;
  Timeline* tl = &timeline_;
  g.mover->set_completion_callback([gp, t0, tl](const cuda::FetchCompletion& c) {
    {
      std::lock_guard<std::mutex> lk(gp->cq_mu);
      gp->cq.push_back({c, us_between(t0, Clock::now())});
    }
    gp->cq_cv.notify_all();
    tl->record(-1, TimelineKind::kCopyDone, c.slot);
  });
  // Static placement: copy the preloaded experts in before any plan may name them.
  for (int s = 0; s < cache_->n_slots(); ++s)
    if (cache_->state(s) == SlotState::kResident)
      g.mover->request_fetch(
          {static_cast<int64_t>(cache_->slot_layer(s)) * n_expert_ + cache_->slot_expert(s), s,
           false, 0});
  g.mover->wait_idle();
  std::lock_guard<std::mutex> lk(g.cq_mu);
  g.cq.clear();
}

void Runtime::stop_engine_gpu() {
  Gpu& g = *gpu_;
  g.mover.reset();  // joins its thread (copies in flight complete) before the slab goes
  g.slab.reset();
  std::lock_guard<std::mutex> lk(g.cq_mu);
  g.cq.clear();
  g.cq_local.clear();
}

void Runtime::quiesce_gpu() {
  HM_CUDA_CHECK(cudaSetDevice(device_));
  HM_CUDA_CHECK(cudaDeviceSynchronize());  // queued host functions name the engine's state
  pause_planner();                         // resume_planner() once the engine is rebuilt
  if (gpu_->mover) gpu_->mover->wait_idle();
}

void Runtime::stop_gpu() {
  if (!gpu_) return;
  (void)cudaSetDevice(device_);
  (void)cudaDeviceSynchronize();  // host functions / the planner serve the queued steps
  stop_planner();
  for (auto& c : layers_) {
    if (!c || !c->job.valid()) continue;
    try {
      c->job.wait();
    } catch (...) {
    }
  }
  Gpu& g = *gpu_;
  g.mover.reset();  // joins its thread before slab and store go
  g.slab.reset();
  g.prefill.reset();
  if (g.d_workspace) (void)cudaFree(g.d_workspace);
  if (g.d_partial) (void)cudaFree(g.d_partial);
  if (g.d_acc) (void)cudaFree(g.d_acc);
  if (g.d_plan) (void)cudaFree(g.d_plan);
  for (auto& c : layers_) {
    if (!c) continue;
    if (c->pinned) (void)cudaFreeHost(c->pinned);
    if (c->mapped) (void)cudaFreeHost(c->mapped);
    if (c->ev_start) (void)cudaEventDestroy(static_cast<cudaEvent_t>(c->ev_start));
    if (c->ev_stop) (void)cudaEventDestroy(static_cast<cudaEvent_t>(c->ev_stop));
    c->pinned = c->mapped = c->ev_start = c->ev_stop = nullptr;
  }
  g.slab.reset();
  g.store.reset();
  if (g.bells) (void)cudaFreeHost(g.bells);
  g.bells = nullptr;
  gpu_.reset();
}

bool Runtime::acquire_slots(uint64_t plan_id, const std::vector<int>& slots,
                            const std::vector<int64_t>& experts) {
  cuda::Mover& m = *gpu_->mover;
  for (std::size_t i = 0; i < slots.size(); ++i)
    if (m.resident_expert(slots[i]) != experts[i]) return false;
  return m.acquire(plan_id, slots.data(), experts.data(), static_cast<int>(slots.size()));
}

void Runtime::request_copy(int64_t global_expert, int slot, bool prefetch, uint64_t generation) {
  Gpu& g = *gpu_;
  g.request_us[slot] = us_between(t0_, Clock::now());
  g.mover->set_generation(visits_);
  g.mover->request_fetch({global_expert, slot, prefetch, generation});
}

void Runtime::wait_copies() {
  if (gpu_ && gpu_->mover) gpu_->mover->wait_idle();
}

std::vector<int64_t> Runtime::mover_stats() const {
  if (!gpu_ || !gpu_->mover) return {0, 0, 0, 0};
  const cuda::MoverStats s = gpu_->mover->stats();
  return {static_cast<int64_t>(s.copies_done), static_cast<int64_t>(s.bytes_copied),
          static_cast<int64_t>(s.dropped_stale + s.dropped_overflow),
          static_cast<int64_t>(s.waits_for_release)};
}

Runtime::Launch* Runtime::launch_for(LayerCtx& c, int T, int n_hints, HintKind hint_kind) {
  auto& slot = c.launches[{T, n_hints, static_cast<int>(hint_kind)}];
  if (!slot) {
    Gpu& g = *gpu_;
    uint32_t id = 0;
    if (g.doorbell) {
      id = g.n_launch_ids.load(std::memory_order_relaxed) + 1;
      HM_CHECK_RT(id <= g.launch_by_id.size(), "more than ", g.launch_by_id.size(),
                  " distinct (layer, tokens, hints) decode shapes");
    }
    slot = std::make_unique<Launch>(Launch{this, &c, T, n_hints, hint_kind, id});
    if (g.doorbell) {
      g.launch_by_id[id - 1] = slot.get();
      g.n_launch_ids.store(id, std::memory_order_release);  // publishes the entry to the planner
    }
  }
  return slot.get();
}

void Runtime::poll_gpu_timing(LayerCtx& c) {
  if (!c.timing_pending) return;
  if (cudaEventQuery(static_cast<cudaEvent_t>(c.ev_stop)) != cudaSuccess) {
    (void)cudaGetLastError();  // cudaErrorNotReady is not an error
    return;
  }
  float ms = 0;
  HM_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(c.ev_start),
                                     static_cast<cudaEvent_t>(c.ev_stop)));
  c.timing_pending = false;
  std::lock_guard<std::mutex> lk(mu_);
  const double us = ms * 1000.0;
  c.stats.gpu_us += us;
  ++c.stats.gpu_timed;
  if (c.timed_gpu_experts > 0) {
    const double per = (us - cost_->gpu_layer_overhead()) / c.timed_gpu_experts;
    const int64_t n = std::max<int64_t>(1, c.timed_gpu_pairs / c.timed_gpu_experts);
    if (per > 0) cost_->refine(Resource::kGpu, n, per);
  }
}

void Runtime::forward_cuda(int layer, int64_t T, const void* x, const int32_t* ids, const float* w,
                           const void* hints, int n_hints, int hint_kind, void* out, bool out_bf16,
                           void* stream) {
  check_error();
  HM_CHECK(device_ >= 0, "this Runtime has no CUDA device: pass CPU tensors");
  HM_CHECK(T >= 1, "T (tokens) must be >= 1, got ", T);
  HM_CHECK(x && ids && w && out, "x, topk_ids, topk_weights and out must not be null");
  HM_CHECK((reinterpret_cast<uintptr_t>(x) & 15u) == 0, "x must be 16-byte aligned");
  HM_CHECK(n_hints >= 0 && (n_hints == 0 || hints), "hints must be given when n_hints > 0");
  HM_CHECK(hint_kind >= 0 && hint_kind <= 2,
           "hint_kind must be 0 (int32 ids), 1 (fp32 logits) or 2 (bf16 logits), got ", hint_kind);
  const auto kind = static_cast<HintKind>(hint_kind);
  if (kind != HintKind::kIds && n_hints > 0) {
    HM_CHECK(T <= opt_.decode_max_tokens,
             "next-layer hint logits are for decode steps (T <= ", opt_.decode_max_tokens,
             "); pass top-k ids for T = ", T);
    HM_CHECK(n_hints == T * n_expert_, "hint logits must be [T, n_expert] = ", T * n_expert_,
             " values, got ", n_hints);
    HM_CHECK(top_k_ <= kHintTopkMax, "hint logits need top_k <= ", kHintTopkMax,
             "; pass top-k ids for top_k = ", top_k_);
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  HM_CUDA_CHECK(cudaStreamIsCapturing(s, &cap));
  const bool capturing = cap != cudaStreamCaptureStatusNone;
  if (!started_) {
    HM_CHECK(!capturing,
             "the runtime allocates its buffers at the first forward: run one eager "
             "step before capturing a CUDA graph");
    start();
  }
  LayerCtx& c = ctx(layer);
  timeline_.record(layer, TimelineKind::kEnqueueBegin, static_cast<int32_t>(T));
  if (T <= opt_.decode_max_tokens) {
    HM_CHECK(kind != HintKind::kIds || n_hints <= T * top_k_,
             "n_hints must be <= T * top_k = ", T * top_k_, ", got ", n_hints);
    decode_cuda(c, T, x, ids, w, hints, n_hints, kind, out, out_bf16, stream);
  } else {
    HM_CHECK(!capturing, "T = ", T, " > decode_max_tokens = ", opt_.decode_max_tokens,
             " takes the host-driven prefill path, which cannot be captured in a CUDA graph");
    HM_CHECK(n_hints <= T * top_k_, "n_hints must be <= T * top_k = ", T * top_k_, ", got ",
             n_hints);
    prefill_cuda(c, T, x, ids, w, static_cast<const int32_t*>(hints), n_hints, out, out_bf16,
                 stream);
  }
}

void Runtime::decode_cuda(LayerCtx& c, int64_t T, const void* x, const int32_t* ids, const float* w,
                          const void* hints, int n_hints, HintKind hint_kind, void* out,
                          bool out_bf16, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const cuda::OutDtype od = out_bf16 ? cuda::OutDtype::kBFloat16 : cuda::OutDtype::kFloat32;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  HM_CUDA_CHECK(cudaStreamIsCapturing(s, &cap));
  const bool capturing = cap != cudaStreamCaptureStatusNone;
  if (!capturing) poll_gpu_timing(c);
  const int k = top_k_;
  const std::size_t H = static_cast<std::size_t>(layout_.hidden);
  Launch* la = launch_for(c, static_cast<int>(T), n_hints, hint_kind);
  const int hint_bytes = n_hints * (hint_kind == HintKind::kLogitsBf16 ? 2 : 4);
  const bool bell = gpu_->doorbell, fused = gpu_->fused;
  // Fused: the GPU experts sum into d_acc and the finish kernel writes out; otherwise they add
  // into out, which starts at zero.
  void* gpu_out = fused ? static_cast<void*>(gpu_->d_acc) : out;
  const cuda::OutDtype gpu_od = fused ? cuda::OutDtype::kFloat32 : od;
  if (fused) {
    cuda::DecodeStageArgs a;
    a.ids = ids;
    a.w = w;
    a.x = static_cast<const uint16_t*>(x);
    a.hints = static_cast<const uint16_t*>(hints);
    a.n_ids = static_cast<int>(T) * k;
    a.n_hint_halves = hint_bytes / 2;
    a.n_x = static_cast<int64_t>(T * H);
    a.ids_h = c.d_ids_h;
    a.w_h = c.d_w_h;
    a.x_h = c.d_x_h;
    a.hints_h = reinterpret_cast<uint16_t*>(c.d_hints_h);
    a.acc = gpu_->d_acc;
    a.done = static_cast<uint32_t*>(c.d_bell_done);
    a.ready = static_cast<uint32_t*>(c.d_bell_ready);
    a.ready_value = la->id;
    a.go = static_cast<uint32_t*>(c.d_bell_go);
    a.plan_token_ptr_h = c.d_token_ptr;
    a.plan_pair_token_h = c.d_pair_token;
    a.plan_pair_slot_h = c.d_pair_slot;
    a.plan_pair_weight_h = c.d_pair_weight;
    a.plan_token_ptr = gpu_->d_plan_token_ptr;
    a.plan_pair_token = gpu_->d_plan_pair_token;
    a.plan_pair_slot = gpu_->d_plan_pair_slot;
    a.plan_pair_weight = gpu_->d_plan_pair_weight;
    a.n_tokens = static_cast<int>(T);
    a.max_pairs = static_cast<int>(T) * k;
    cuda::launch_decode_stage(a, s);
  } else {
    HM_CUDA_CHECK(cudaMemsetAsync(out, 0, T * H * (out_bf16 ? 2 : 4), s));
    HM_CUDA_CHECK(cudaMemcpyAsync(c.ids_h, ids, T * k * 4, cudaMemcpyDeviceToHost, s));
    HM_CUDA_CHECK(cudaMemcpyAsync(c.w_h, w, T * k * 4, cudaMemcpyDeviceToHost, s));
    HM_CUDA_CHECK(cudaMemcpyAsync(c.x_h, x, T * H * 2, cudaMemcpyDeviceToHost, s));
    if (n_hints > 0)
      HM_CUDA_CHECK(cudaMemcpyAsync(c.hints_h, hints, static_cast<std::size_t>(hint_bytes),
                                    cudaMemcpyDeviceToHost, s));
    if (bell)
      enqueue_doorbell_waits(c, la, stream, /*before_kernel=*/true);
    else
      HM_CUDA_CHECK(cudaLaunchHostFunc(s, &Runtime::plan_fn, la));
  }
  if (gpu_->slab) {
    const bool timed = !capturing && !c.timing_pending;
    if (timed) {
      c.timing_armed.store(true, std::memory_order_release);
      HM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(c.ev_start), s));
    }
    cuda::DevicePlan p;  // fused: the stage kernel's device copy; otherwise mapped memory
    p.token_ptr = fused ? gpu_->d_plan_token_ptr : c.d_token_ptr;
    p.pair_token = fused ? gpu_->d_plan_pair_token : c.d_pair_token;
    p.pair_slot = fused ? gpu_->d_plan_pair_slot : c.d_pair_slot;
    p.pair_weight = fused ? gpu_->d_plan_pair_weight : c.d_pair_weight;
    p.n_tokens = static_cast<int>(T);
    p.max_pairs = static_cast<int>(T) * k;
    cuda::launch_decode(slab_view(*gpu_->slab), p, x, gpu_->d_workspace, gpu_out, gpu_od, s);
    if (timed) {
      HM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(c.ev_stop), s));
      c.timing_pending = true;
    }
  }
  if (fused) {
    cuda::DecodeFinishArgs f;
    f.acc = gpu_->d_acc;
    f.partial = c.d_partial_map;
    f.out = out;
    f.out_dtype = od;
    f.n = static_cast<int64_t>(T * H);
    f.kdone = static_cast<uint32_t*>(c.d_bell_kdone);
    f.done = static_cast<const uint32_t*>(c.d_bell_done);
    cuda::launch_decode_finish(f, s);
    timeline_.record(c.layer, TimelineKind::kEnqueueEnd);
    return;
  }
  if (bell)
    enqueue_doorbell_waits(c, la, stream, /*before_kernel=*/false);
  else
    HM_CUDA_CHECK(cudaLaunchHostFunc(s, &Runtime::join_fn, la));
  const float* partial = c.d_partial_map;
  if (gpu_->partials_by_copy) {
    HM_CUDA_CHECK(
        cudaMemcpyAsync(gpu_->d_partial, c.partial_h, T * H * 4, cudaMemcpyHostToDevice, s));
    partial = gpu_->d_partial;
  }
  cuda::launch_add_partials(out, od, partial, static_cast<int64_t>(T * H), s);
  timeline_.record(c.layer, TimelineKind::kEnqueueEnd);
}

void Runtime::plan_fn(void* p) {
  const Launch& la = *static_cast<Launch*>(p);
  la.rt->host_plan(la);
  try {
    la.rt->issue_copies(*la.ctx);
  } catch (const std::exception& e) {
    la.rt->record_error(std::string("layer ") + std::to_string(la.ctx->layer) +
                        " copies: " + e.what());
  }
}

void Runtime::join_fn(void* p) {
  const Launch& la = *static_cast<Launch*>(p);
  la.rt->host_join(la);
}

void Runtime::host_plan(const Launch& la) {
  LayerCtx& c = *la.ctx;
  const int T = la.T;
  const std::size_t TH = static_cast<std::size_t>(T) * layout_.hidden;
  const bool timed = c.timing_armed.exchange(false, std::memory_order_acq_rel);
  timeline_.record(c.layer, TimelineKind::kPlanBegin, T);
  try {
    for (std::size_t i = 0; i < TH; ++i) c.x32[i] = bf16_to_f32(c.x_h[i]);
    const int32_t* hint_ids = la.n_hints > 0 ? c.hints_h : nullptr;
    int n_hint_ids = la.n_hints;
    if (la.hint_kind != HintKind::kIds && la.n_hints > 0) {  // top k of layer + 1's logits
      hint_topk(c.hints_h, la.hint_kind, T, n_expert_, top_k_, c.hint_ids.data());
      hint_ids = c.hint_ids.data();
      n_hint_ids = T * top_k_;
    }
    timeline_.record(c.layer, TimelineKind::kPlanInputs);
    plan(c, T, c.ids_h, c.w_h, hint_ids, n_hint_ids, Mode::kDecode, c.out);
    timeline_.record(c.layer, TimelineKind::kPlanScheduled);
    // GPU pairs were emitted in token order: token_ptr is their prefix count per token.
    const std::size_t n = c.out.gpu_token.size();
    int t = 0;
    c.map_token_ptr[0] = 0;
    for (std::size_t i = 0; i < n; ++i) {
      while (t < c.out.gpu_token[i]) c.map_token_ptr[++t] = static_cast<int32_t>(i);
      c.map_pair_token[i] = c.out.gpu_token[i];
      c.map_pair_slot[i] = c.out.gpu_slot[i];
      c.map_pair_weight[i] = c.out.gpu_weight[i];
    }
    while (t < T) c.map_token_ptr[++t] = static_cast<int32_t>(n);
    if (timed) {
      c.timed_gpu_experts = static_cast<int>(c.out.acquire_slots.size());
      c.timed_gpu_pairs = static_cast<int64_t>(n);
    }
    std::fill(c.partial_h, c.partial_h + TH, 0.f);
    if (gpu_->warm.valid()) {  // a warm job still queued would hold this layer's job back
      gpu_->warm.cancel();
      gpu_->warm = cpu::ExpertWarm();
    }
    if (!c.out.cpu.empty()) {
      cpu::MoeLayerArgs a;
      a.layout = layout_;
      a.experts = c.expert_ptrs.data();
      a.n_experts = n_expert_;
      a.x = c.x32.data();
      a.tokens = T;
      a.assignments = c.out.cpu.data();
      a.n_assignments = static_cast<int64_t>(c.out.cpu.size());
      a.out = c.partial_h;
      c.t_submit = Clock::now();
      c.job = cpu::submit_moe_layer(*pool_, a);
    }
    timeline_.record(c.layer, TimelineKind::kPlanEnd,
                     static_cast<int32_t>(c.plan.experts.size() - c.out.acquire_slots.size()),
                     static_cast<int32_t>(c.out.acquire_slots.size()));
  } catch (const std::exception& e) {
    record_error(std::string("layer ") + std::to_string(c.layer) + " plan: " + e.what());
  } catch (...) {
    record_error("layer " + std::to_string(c.layer) + " plan: unknown exception");
  }
  if (has_error_.load(std::memory_order_acquire) && !c.job.valid()) {
    // Failed plan: the kernel must see no pairs; the partial sums add zero.
    std::fill(c.map_token_ptr, c.map_token_ptr + T + 1, 0);
    std::fill(c.partial_h, c.partial_h + TH, 0.f);
  }
}

void Runtime::host_join(const Launch& la) {
  LayerCtx& c = *la.ctx;
  bool waited = false;
  double us = 0;
  timeline_.record(c.layer, TimelineKind::kJoinBegin);
  try {
    if (c.job.valid()) {
      const bool done_before = c.job.done();
      try {
        c.job.wait();
      } catch (const std::exception& e) {
        record_error(std::string("layer ") + std::to_string(c.layer) + " CPU experts: " + e.what());
      }
      // Only a join that had to wait measured the CPU's time (else it finished earlier).
      if (!done_before) {
        waited = true;
        us = us_between(c.t_submit, Clock::now());
      }
      c.job = cpu::JobHandle();
      timeline_.record(c.layer, TimelineKind::kCpuDone, waited ? 1 : 0);
    }
    if (c.acquired) {
      gpu_->mover->release(c.plan_id);
      c.acquired = false;
    }
    release_plan(c, waited, us);
    timeline_.record(c.layer, TimelineKind::kJoinEnd);
  } catch (const std::exception& e) {
    record_error(std::string("layer ") + std::to_string(c.layer) + " join: " + e.what());
  } catch (...) {
    record_error("layer " + std::to_string(c.layer) + " join: unknown exception");
  }
}

void Runtime::prefill_cuda(LayerCtx& c, int64_t T, const void* x, const int32_t* ids,
                           const float* w, const int32_t* hints, int n_hints, void* out,
                           bool out_bf16, void* stream) {
  Gpu& g = *gpu_;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const cuda::OutDtype od = out_bf16 ? cuda::OutDtype::kBFloat16 : cuda::OutDtype::kFloat32;
  const int k = top_k_;
  const std::size_t H = static_cast<std::size_t>(layout_.hidden),
                    TH = static_cast<std::size_t>(T) * H;
  g.ids.resize(static_cast<std::size_t>(T) * k);
  g.w.resize(static_cast<std::size_t>(T) * k);
  g.hints.resize(static_cast<std::size_t>(n_hints));
  g.xb.resize(TH);
  g.x32.resize(TH);
  g.partial.assign(TH, 0.f);
  HM_CUDA_CHECK(cudaMemcpyAsync(g.ids.data(), ids, T * k * 4, cudaMemcpyDeviceToHost, s));
  HM_CUDA_CHECK(cudaMemcpyAsync(g.w.data(), w, T * k * 4, cudaMemcpyDeviceToHost, s));
  HM_CUDA_CHECK(cudaMemcpyAsync(g.xb.data(), x, TH * 2, cudaMemcpyDeviceToHost, s));
  if (n_hints > 0)
    HM_CUDA_CHECK(cudaMemcpyAsync(g.hints.data(), hints, static_cast<std::size_t>(n_hints) * 4,
                                  cudaMemcpyDeviceToHost, s));
  HM_CUDA_CHECK(cudaMemsetAsync(out, 0, TH * (out_bf16 ? 2 : 4), s));  // the kernels add to it
  HM_CUDA_CHECK(cudaStreamSynchronize(s));
  check_error();
  for (std::size_t i = 0; i < TH; ++i) g.x32[i] = bf16_to_f32(g.xb[i]);
  plan(c, T, g.ids.data(), g.w.data(), g.hints.data(), n_hints, Mode::kPrefill, c.out);
  PlanOut& po = c.out;
  bool waited = false;
  double cpu_us = 0;
  auto run_cpu = [&](const std::vector<cpu::ExpertAssignment>& as) {
    cpu::MoeLayerArgs a;
    a.layout = layout_;
    a.experts = c.expert_ptrs.data();
    a.n_experts = n_expert_;
    a.x = g.x32.data();
    a.tokens = T;
    a.assignments = as.data();
    a.n_assignments = static_cast<int64_t>(as.size());
    a.out = g.partial.data();
    return cpu::submit_moe_layer(*pool_, a);
  };
  try {
    cpu::JobHandle job;
    const auto t_submit = Clock::now();
    if (!po.cpu.empty()) job = run_cpu(po.cpu);  // the CPU's share runs while the fetches copy
    bool gpu_ok = !po.acquire_slots.empty();
    if (!po.wait_slots.empty()) {
      std::unique_lock<std::mutex> lk(g.cq_mu);
      gpu_ok = g.cq_cv.wait_for(lk, std::chrono::seconds(30), [&] {
        for (std::size_t i = 0; i < po.acquire_slots.size(); ++i)
          if (g.mover->resident_expert(po.acquire_slots[i]) != po.acquire_experts[i]) return false;
        return true;
      });
    }
    if (gpu_ok) {
      c.plan_id = ++plan_ids_;
      c.acquired = acquire_slots(c.plan_id, po.acquire_slots, po.acquire_experts);
      gpu_ok = c.acquired;
    }
    if (gpu_ok) {
      cuda::PrefillRunner& r = *g.prefill;
      r.run(slab_view(*g.slab), po.gpu_token.data(), po.gpu_slot.data(), po.gpu_weight.data(),
            static_cast<int>(po.gpu_token.size()), static_cast<int>(T), x, out, od, s);
    }
    if (job.valid()) {
      waited = !job.done();
      job.wait();
      cpu_us = us_between(t_submit, Clock::now());
    }
    if (!gpu_ok && !po.gpu_token.empty()) {
      // The GPU share could not take its slots (a copy never landed): the CPU computes it.
      std::vector<cpu::ExpertAssignment> rest;
      std::vector<int> expert_of_slot(static_cast<std::size_t>(n_slots_), -1);
      for (std::size_t i = 0; i < po.acquire_slots.size(); ++i)
        expert_of_slot[po.acquire_slots[i]] = static_cast<int>(po.acquire_experts[i] % n_expert_);
      for (std::size_t i = 0; i < po.gpu_token.size(); ++i)
        rest.push_back({po.gpu_token[i], expert_of_slot[po.gpu_slot[i]], po.gpu_weight[i]});
      run_cpu(rest).wait();
    }
    if (!po.cpu.empty() || !gpu_ok) {
      if (g.d_partial_cap < TH) {
        HM_CUDA_CHECK(cudaFree(g.d_partial));
        g.d_partial = nullptr;
        HM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&g.d_partial), TH * sizeof(float)));
        g.d_partial_cap = TH;
      }
      HM_CUDA_CHECK(
          cudaMemcpyAsync(g.d_partial, g.partial.data(), TH * 4, cudaMemcpyHostToDevice, s));
      cuda::launch_add_partials(out, od, g.d_partial, static_cast<int64_t>(TH), s);
    }
    HM_CUDA_CHECK(cudaStreamSynchronize(s));
  } catch (...) {
    (void)cudaStreamSynchronize(s);
    if (c.acquired) g.mover->release(c.plan_id);
    c.acquired = false;
    release_plan(c, false, 0);
    throw;
  }
  if (c.acquired) g.mover->release(c.plan_id);
  c.acquired = false;
  release_plan(c, waited, cpu_us);
}

#else  // CPU-only build: every GPU entry says so.

namespace {
[[noreturn]] void no_cuda() {
  throw hm::RuntimeError(
      "hybrid_moe was built without CUDA: the Runtime runs on the CPU only "
      "(device=-1, CPU tensors)");
}
}  // namespace

void Runtime::init_gpu() {
  no_cuda();
}
bool Runtime::gpu_fill(int, const uint8_t*) {
  return false;
}
void Runtime::start_gpu() {
  no_cuda();
}
void Runtime::start_engine_gpu() {
  no_cuda();
}
void Runtime::stop_engine_gpu() {}
void Runtime::quiesce_gpu() {}
void Runtime::stop_gpu() {}
bool Runtime::acquire_slots(uint64_t, const std::vector<int>&, const std::vector<int64_t>&) {
  return false;
}
void Runtime::request_copy(int64_t, int, bool, uint64_t) {
  no_cuda();
}
void Runtime::wait_copies() {}
std::vector<int64_t> Runtime::mover_stats() const {
  return {0, 0, 0, 0};
}
Runtime::Launch* Runtime::launch_for(LayerCtx&, int, int, HintKind) {
  no_cuda();
}
void Runtime::poll_gpu_timing(LayerCtx&) {}
void Runtime::forward_cuda(int, int64_t, const void*, const int32_t*, const float*, const void*,
                           int, int, void*, bool, void*) {
  no_cuda();
}
void Runtime::decode_cuda(LayerCtx&, int64_t, const void*, const int32_t*, const float*,
                          const void*, int, HintKind, void*, bool, void*) {
  no_cuda();
}
void Runtime::prefill_cuda(LayerCtx&, int64_t, const void*, const int32_t*, const float*,
                           const int32_t*, int, void*, bool, void*) {
  no_cuda();
}
void Runtime::plan_fn(void*) {}
void Runtime::join_fn(void*) {}
void Runtime::host_plan(const Launch&) {}
void Runtime::host_join(const Launch&) {}

#endif

}  // namespace hm::runtime
