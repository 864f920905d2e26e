// [NOTE] Doorbell decode: the planner thread (runtime.h, DESIGN.md section 3).
//
// Host functions hand each decode layer to the driver's callback thread twice (plan, join); on a
// loaded 16-core host each hand-off measured tens of microseconds (bench/RESULTS.md, timeline).
// Doorbell decode replaces them with words in mapped host memory and stream memory operations:
//   stream:  D2H ids/w/x/hints -> write ready = launch id -> wait go == 1, write go = 0
//            -> decode kernel -> write kdone = 1 -> wait done == 1, write done = 0 -> add partials
//            (fused, the default: one stage kernel does the D2H, resets done, writes ready, waits
//            for go, copies the plan to device memory and resets go; one finish kernel writes
//            kdone, waits for done and writes out; cuda/decode_handoff.h)
//   planner: sees ready -> plan (host_plan: scheduler, mover requests, mapped plan, CPU job
//            submitted) -> go = 1; sees the CPU job finished -> release plan (pins) -> done = 1;
//            sees kdone -> release the plan's slots in the mover.
// The planner spins (one core) while decode steps arrive and backs off to sleeping when idle. It
// never leaves the stream waiting: every path that saw `ready` writes go and done, an exception
// included (the step's plan is then empty, the error is recorded and raised by the next call).
// Every memory word has one writer per direction and is reset by the side that waited on it, so
// the same captured graph can be replayed. Quiescing (reconfigure, destruction) synchronizes the
// device first (the planner serves the queued steps), then parks the planner.
#include <algorithm>
#include <cstring>

#include "runtime/runtime_internal.h"
#if HYBRID_MOE_WITH_CUDA
#include "cuda/cuda_check.h"
#include "cuda/stream_memops.h"
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HM_PLANNER_PAUSE() _mm_pause()
#else
#define HM_PLANNER_PAUSE() std::this_thread::yield()
#endif

namespace hm::runtime {

#if HYBRID_MOE_WITH_CUDA

namespace {

constexpr std::size_t kBellStride = 64;  // bytes between words: one cache line each
constexpr uint32_t kMaxLaunchIds = 1u << 16;

inline uint32_t load_word(volatile uint32_t* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
inline void store_word(volatile uint32_t* p, uint32_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

}  // namespace

std::string Runtime::decode_sync() const {
  if (!gpu_) return "none (CPU only)";
  if (gpu_->doorbell)
    return std::string(gpu_->fused ? "doorbell, fused hand-off" : "doorbell") +
           (gpu_->planner_helps ? ", planner computes" : "");
  return "host functions (" + gpu_->decode_sync_why + ")";
}

void Runtime::init_doorbells() {
  Gpu& g = *gpu_;
  const char* env = std::getenv("HM_DECODE_SYNC");
  if (env && std::string(env) == "hostfn") {
    g.decode_sync_why = "HM_DECODE_SYNC=hostfn";
    return;
  }
  const cuda::StreamMemOps& mem = cuda::StreamMemOps::get(device_);
  if (!mem.ok()) {
    g.decode_sync_why = mem.why();
    return;
  }
  const std::size_t bytes = static_cast<std::size_t>(n_layers_) * 4 * kBellStride;
  HM_CUDA_CHECK(cudaHostAlloc(&g.bells, bytes, cudaHostAllocMapped));
  std::memset(g.bells, 0, bytes);
  void* dev = nullptr;
  HM_CUDA_CHECK(cudaHostGetDevicePointer(&dev, g.bells, 0));
  auto* h = static_cast<uint8_t*>(g.bells);
  auto* d = static_cast<uint8_t*>(dev);
  for (int l = 0; l < n_layers_; ++l) {
    LayerCtx& c = *layers_[l];
    const std::size_t base = static_cast<std::size_t>(l) * 4 * kBellStride;
    c.bell_ready = reinterpret_cast<volatile uint32_t*>(h + base);
    c.bell_go = reinterpret_cast<volatile uint32_t*>(h + base + kBellStride);
    c.bell_kdone = reinterpret_cast<volatile uint32_t*>(h + base + 2 * kBellStride);
    c.bell_done = reinterpret_cast<volatile uint32_t*>(h + base + 3 * kBellStride);
    c.d_bell_ready = d + base;
    c.d_bell_go = d + base + kBellStride;
    c.d_bell_kdone = d + base + 2 * kBellStride;
    c.d_bell_done = d + base + 3 * kBellStride;
  }
  // Probe on a private stream with words already satisfied (a refusal must not hang): write,
  // wait on a word the host set first, reset it.
  cudaStream_t s = nullptr;
  HM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  LayerCtx& c0 = *layers_[0];
  std::string why;
  try {
    store_word(c0.bell_go, 1);
    mem.write(s, c0.d_bell_ready, 7);
    mem.wait_eq(s, c0.d_bell_go, 1);
    mem.write(s, c0.d_bell_go, 0);
    HM_CUDA_CHECK(cudaStreamSynchronize(s));
    if (load_word(c0.bell_ready) != 7 || load_word(c0.bell_go) != 0)
      why = "the probe's words did not change as written";
  } catch (const std::exception& e) {
    why = e.what();
  }
  (void)cudaGetLastError();
  (void)cudaStreamDestroy(s);
  store_word(c0.bell_ready, 0);
  store_word(c0.bell_go, 0);
  if (!why.empty()) {
    g.decode_sync_why = "stream memory operations failed their probe: " + why;
    return;
  }
  g.launch_by_id.assign(kMaxLaunchIds, nullptr);
  g.doorbell = true;
  g.planner_stop = false;
  g.planner = std::thread([this] { planner_loop(); });
}

void Runtime::enqueue_doorbell_waits(LayerCtx& c, Launch* la, void* stream, bool before_kernel) {
  const cuda::StreamMemOps& mem = cuda::StreamMemOps::get(device_);
  if (before_kernel) {
    mem.write(stream, c.d_bell_ready, la->id);
    mem.wait_eq(stream, c.d_bell_go, 1);
    mem.write(stream, c.d_bell_go, 0);
  } else {
    mem.write(stream, c.d_bell_kdone, 1);
    mem.wait_eq(stream, c.d_bell_done, 1);
    mem.write(stream, c.d_bell_done, 0);
  }
}

bool Runtime::planner_step() {
  Gpu& g = *gpu_;
  bool worked = false;
  for (int l = 0; l < n_layers_; ++l) {
    LayerCtx& c = *layers_[l];
    // The decode kernel finished: its slots may be overwritten now.
    if (c.kernel_pending && load_word(c.bell_kdone)) {
      store_word(c.bell_kdone, 0);
      c.kernel_pending = false;
      try {
        if (c.acquired) {
          gpu_->mover->release(c.plan_id);
          c.acquired = false;
        }
      } catch (const std::exception& e) {
        record_error(std::string("layer ") + std::to_string(l) + " release: " + e.what());
      }
      timeline_.record(l, TimelineKind::kJoinBegin);
      if (!c.cpu_pending) timeline_.record(l, TimelineKind::kJoinEnd);
      worked = true;
    }
    // The CPU's experts finished: the partial sums are final.
    if (c.cpu_pending && c.job.done()) {
      double us = us_between(c.t_submit, Clock::now());
      try {
        c.job.wait();
      } catch (const std::exception& e) {
        record_error(std::string("layer ") + std::to_string(l) + " CPU experts: " + e.what());
        us = 0;
      }
      c.job = cpu::JobHandle();
      try {
        release_plan(c, us > 0, us);
      } catch (const std::exception& e) {
        record_error(std::string("layer ") + std::to_string(l) + " join: " + e.what());
      }
      c.cpu_pending = false;
      timeline_.record(l, TimelineKind::kCpuDone, 1);
      store_word(c.bell_done, 1);
      if (!c.kernel_pending) timeline_.record(l, TimelineKind::kJoinEnd);
      worked = true;
      if (g.prewarm && l + 1 < n_layers_) start_prewarm(l + 1);
    }
    // Inputs staged: plan this step.
    const uint32_t id = load_word(c.bell_ready);
    if (id == 0) continue;
    store_word(c.bell_ready, 0);
    worked = true;
    if (c.kernel_pending) {
      // The previous step's kdone was written before this ready (stream order): consume it. It
      // is missing only when that step's enqueue failed half way: then its slots stay acquired
      // (never overwritten under a kernel that might run) and the error is recorded.
      const auto t_wait = Clock::now();
      while (!load_word(c.bell_kdone) && us_between(t_wait, Clock::now()) < 2e6) HM_PLANNER_PAUSE();
      c.kernel_pending = false;
      if (load_word(c.bell_kdone)) {
        store_word(c.bell_kdone, 0);
        if (c.acquired) gpu_->mover->release(c.plan_id);
      } else {
        record_error("layer " + std::to_string(l) + ": the previous decode step never finished");
      }
      c.acquired = false;
    }
    Launch* la = id <= g.launch_by_id.size() ? g.launch_by_id[id - 1] : nullptr;
    if (la == nullptr || la->ctx != &c) {
      record_error("layer " + std::to_string(l) + ": unknown doorbell " + std::to_string(id));
      std::fill(c.map_token_ptr, c.map_token_ptr + c.t_max + 1, 0);
      std::fill(c.partial_h, c.partial_h + static_cast<std::size_t>(c.t_max) * layout_.hidden, 0.f);
      c.kernel_pending = true;  // the stream still runs the (empty) kernel and writes kdone
      store_word(c.bell_go, 1);
      store_word(c.bell_done, 1);
      continue;
    }
    host_plan(*la);  // never throws: errors are recorded and leave an empty plan
    c.kernel_pending = true;
    store_word(c.bell_go, 1);
    try {  // after go: the mover's lock and wake-up stay off the GPU's path
      issue_copies(c);
    } catch (const std::exception& e) {
      record_error(std::string("layer ") + std::to_string(l) + " copies: " + e.what());
    }
    if (c.job.valid()) {
      c.cpu_pending = true;
      // Nothing else can arrive before this job ends (the next layer waits for its done word),
      // so the planner's core computes items beside the pool's instead of polling.
      if (g.planner_helps) c.job.help();
    } else {
      try {
        release_plan(c, false, 0);
      } catch (const std::exception& e) {
        record_error(std::string("layer ") + std::to_string(l) + " join: " + e.what());
      }
      store_word(c.bell_done, 1);
    }
  }
  return worked;
}

void Runtime::start_prewarm(int layer) {
  // The experts layer - 1's plan predicted for `layer` that are neither on the GPU nor on their
  // way there, in hint order (the likeliest first): the ones the CPU will probably compute.
  // Between this layer's done word and the next plan the pool idles for the GPU's hand-off (~30
  // us per layer on the lent H200: ~4 MB of DRAM at its rate), which the warm job streams.
  constexpr std::size_t kMaxWarm = 2;
  LayerCtx& prev = *layers_[layer - 1];
  LayerCtx& c = *layers_[layer];
  std::vector<const uint8_t*>& ptrs = c.warm_ptrs;
  ptrs.clear();
  try {
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (int e : prev.hints) {
        if (ptrs.size() == kMaxWarm) break;
        if (cache_ && cache_->lookup(layer, e) >= 0) continue;
        ptrs.push_back(c.expert_ptrs[static_cast<std::size_t>(e)]);
      }
    }
    if (gpu_->warm.valid()) gpu_->warm.cancel();
    gpu_->warm = ptrs.empty() ? cpu::ExpertWarm()
                              : cpu::submit_expert_warm(*pool_, layout_, ptrs.data(),
                                                        static_cast<int64_t>(ptrs.size()));
  } catch (const std::exception& e) {
    record_error("layer " + std::to_string(layer) + " prewarm: " + e.what());
  }
}

void Runtime::planner_loop() {
  Gpu& g = *gpu_;
  auto last_work = Clock::now();
  while (!g.planner_stop.load(std::memory_order_acquire)) {
    if (g.planner_pause.load(std::memory_order_acquire)) {
      g.planner_parked.store(true, std::memory_order_release);
      while (g.planner_pause.load(std::memory_order_acquire) &&
             !g.planner_stop.load(std::memory_order_acquire))
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      g.planner_parked.store(false, std::memory_order_release);
      continue;
    }
    if (planner_step()) {
      last_work = Clock::now();
      continue;
    }
    // Idle: spin while decode steps are likely to follow, then yield, then sleep.
    const double idle_us = us_between(last_work, Clock::now());
    if (idle_us < 2000) {
      for (int i = 0; i < 32; ++i) HM_PLANNER_PAUSE();
    } else if (idle_us < 50000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

void Runtime::pause_planner() {
  Gpu& g = *gpu_;
  if (!g.doorbell || !g.planner.joinable()) return;
  g.planner_pause.store(true, std::memory_order_release);
  while (!g.planner_parked.load(std::memory_order_acquire)) std::this_thread::yield();
  if (g.warm.valid()) {  // it reads the host store, which a reconfiguration may replace
    g.warm.cancel();
    g.warm.wait();
    g.warm = cpu::ExpertWarm();
  }
  // The device is synchronized: every kdone is written; take what the planner had not seen.
  for (int l = 0; l < n_layers_; ++l) {
    LayerCtx& c = *layers_[l];
    if (c.kernel_pending && load_word(c.bell_kdone)) {
      store_word(c.bell_kdone, 0);
      c.kernel_pending = false;
      if (c.acquired && gpu_->mover) gpu_->mover->release(c.plan_id);
      c.acquired = false;
    }
  }
}

void Runtime::settle() {
  if (!gpu_ || !started_) return;
  HM_CUDA_CHECK(cudaSetDevice(device_));
  HM_CUDA_CHECK(cudaDeviceSynchronize());
  pause_planner();  // handles the kdone words the planner had not seen yet
  resume_planner();
}

void Runtime::resume_planner() {
  if (gpu_ && gpu_->doorbell) gpu_->planner_pause.store(false, std::memory_order_release);
}

void Runtime::stop_planner() {
  if (!gpu_ || !gpu_->planner.joinable()) return;
  gpu_->planner_stop.store(true, std::memory_order_release);
  gpu_->planner.join();
  if (gpu_->warm.valid()) {
    gpu_->warm.cancel();
    gpu_->warm.wait();
    gpu_->warm = cpu::ExpertWarm();
  }
}

#else  // CPU-only build

std::string Runtime::decode_sync() const {
  return "none (CPU only)";
}
void Runtime::settle() {}
void Runtime::init_doorbells() {}
void Runtime::enqueue_doorbell_waits(LayerCtx&, Launch*, void*, bool) {}
void Runtime::planner_loop() {}
bool Runtime::planner_step() {
  return false;
}
void Runtime::pause_planner() {}
void Runtime::start_prewarm(int) {}
void Runtime::resume_planner() {}
void Runtime::stop_planner() {}

#endif

}  // namespace hm::runtime
