// [NOTE] The live runtime (DESIGN.md section 3, issue 6 item 1): executes one MoE layer's plan on
// the CPU and the GPU. One Runtime per model, shared by its layers.
//
// Ownership: the CPU thread pool (hm::cpu::shared_pool), the host expert store indexed by
// (layer, expert) (page-locked PinnedExpertStore with a GPU, aligned heap per layer without), the
// DeviceSlab and the Mover (GPU only), and the decision engine of csrc/core (ExpertCache with
// simulated_clock=false, Policy, Scheduler, CostModel), which is the residency authority:
//   ExpertCache decides (scheduler: begin_load / pins); the Mover executes the copies; its
//   completions (callback -> queue) flip ExpertCache::complete_load at the start of the next
//   plan, so residency changes between plans only; a plan acquires its GPU slots in the Mover and
//   releases them in its join step (after every kernel reading them finished).
//
// Life cycle: register_layer() for every layer [0, n_layers) (copies the packed expert bytes into
// the host store), then start() (done by the first forward when not called): fixes n_layers, the
// slot count (from the budget, of ALL registered experts) and allocates per-layer buffers. Giving
// n_layers up front lets the pinned store be allocated at the first registration and filled
// directly (no second host copy); otherwise layers are staged and copied in at start().
//
// Paths:
//   forward_cpu   CPU tensors: plan, CPU kernel on the pool with the caller computing too, wait.
//   forward_cuda  T <= decode_max_tokens: the stream-ordered decode sequence on the caller's stream
//                 (stage inputs to mapped memory -> planner (doorbells, runtime_planner.cpp) or
//                 host fn plans -> decode kernel on the mapped plan -> join -> out = GPU sum + CPU
//                 partials; fused hand-off kernels in cuda/decode_handoff.h), capturable in a CUDA
//                 graph (per-layer fixed buffers, per-(layer, T) fixed arguments). In decode a
//                 demand fetch cannot be waited for inside the stream, so a fetched miss is
//                 computed on the CPU this step and its copy lands for later steps (lru-fetch thus
//                 behaves as "admit every miss"). T > decode_max_tokens (never while capturing):
//                 host-driven prefill: sync once, plan, CPU share on the pool while the layer's
//                 demand fetches copy, then the grouped tensor-core GEMM (PrefillRunner) on hits +
//                 fetched slots, add partials.
// Errors inside host functions cannot propagate: the first is recorded, that plan becomes empty
// (kernel sees zero pairs, CPU part skipped) and check_error() (called by every forward) raises
// it as RuntimeError.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cost_model.h"
#include "core/expert_cache.h"
#include "core/policy.h"
#include "core/scheduler.h"
#include "core/weight_format.h"
#include "cpu/moe_cpu.h"
#include "cpu/thread_pool.h"
#include "runtime/hint_topk.h"
#include "runtime/timeline.h"

namespace hm::runtime {

struct RuntimeOptions {
  std::string policy = "value";  // policy_names() except 'oracle' (simulator only)
  HardwareProfile profile;
  int threads = 0;  // CPU pool size; 0: HYBRID_MOE_THREADS, else the physical cores (minus 2
                    // with a GPU: the planner thread and the caller keep a core each)
  int device = -1;  // CUDA device ordinal; -1: CPU only (budget then counts as 0)
  // The cache budget: exactly one of these is >= 0. Fraction of all registered experts in [0, 1]
  // (ceil), bytes (floor to whole slots), or slots. 0 means every expert on the CPU.
  double budget_fraction = -1;
  int64_t budget_bytes = -1;
  int64_t budget_slots = -1;
  int n_layers = 0;               // 0: known at start() (the highest registered layer + 1)
  int decode_max_tokens = 64;     // T above it takes the prefill path
  double hint_probability = 0.8;  // initial next-layer predictor accuracy (then measured)
  // Use counts [n_layers * n_expert] of a calibration run (optional): static's fixed placement;
  // the other caching policies start from the same placement and adapt (warm start).
  std::vector<double> frequency;
  ValueParams value;
};

// Per layer counters (all since the last reset_stats()). pairs = (token, expert) selections.
struct LayerStats {
  int64_t forwards = 0, tokens = 0;
  int64_t pairs = 0, cpu_pairs = 0, gpu_pairs = 0;        // cpu_pairs + gpu_pairs == pairs
  int64_t experts = 0, cpu_experts = 0, gpu_experts = 0;  // distinct per forward, summed
  int64_t hits = 0, misses = 0, in_flight = 0;
  int64_t demand_copies = 0, prefetch_copies = 0, admit_copies = 0, copy_bytes = 0;
  int64_t decode_fetch_on_cpu = 0;  // demand fetches computed on the CPU (decode path)
  double cpu_us = 0;  // measured CPU expert time (host clock, when the join had to wait)
  double gpu_us = 0;  // measured decode kernel time (cudaEvents, eager steps only)
  int64_t cpu_timed = 0, gpu_timed = 0;
};

class Runtime {
 public:
  explicit Runtime(const RuntimeOptions& opt);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // packed: [n_expert * stride] bytes, expert e at e * stride, layout make_expert_layout(f, H, I).
  // The first layer fixes the format, shape, n_expert and top_k; later ones must match.
  void register_layer(int layer, WeightFormat f, int64_t hidden, int64_t intermediate, int n_expert,
                      int top_k, const uint8_t* packed);
  void start();
  bool started() const { return started_; }
  // Switches policy, budget, profile, frequency, hint_probability and value parameters, keeping
  // the registered experts (the host store is the expensive part: 58 GB pinned for Qwen3-30B-A3B
  // in bf16). Waits for every queued step (device synchronize), then rebuilds the decision engine
  // and the VRAM cache (new slab: CUDA graphs captured earlier must be captured again) and zeroes
  // the stats. device, threads, n_layers and decode_max_tokens must stay as they are. On a bad
  // option it raises and the runtime keeps its previous configuration.
  void reconfigure(const RuntimeOptions& o);
  const RuntimeOptions& options() const { return opt_; }

  // Host tensors. x fp32 [T, H]; ids int32 [T, k]; w fp32 [T, k]; hints int32 [n_hints] (experts
  // predicted for layer + 1) or null; out fp32 [T, H], ADDED to.
  void forward_cpu(int layer, int64_t T, const float* x, const int32_t* ids, const float* w,
                   const int32_t* hints, int n_hints, float* out);
  // Device tensors on `stream` (a cudaStream_t). x bf16 [T, H] (16-byte aligned); ids int32
  // [T, k]; w fp32 [T, k]; out [T, H], bf16 when out_bf16 else fp32, OVERWRITTEN (never read: no
  // zero-fill needed). Hints (or null, n_hints 0) by hint_kind (hint_topk.h): int32 ids
  // [n_hints <= T * k], or, in decode only (T <= decode_max_tokens), layer + 1's router logits
  // fp32 / bf16 [T, E] (n_hints = T * E) whose top k the planner takes.
  void forward_cuda(int layer, int64_t T, const void* x, const int32_t* ids, const float* w,
                    const void* hints, int n_hints, int hint_kind, void* out, bool out_bf16,
                    void* stream);
  // Raises (RuntimeError) the first error recorded inside a host function, and clears it.
  void check_error();
  // Blocks until the mover has copied everything it was asked to (tests, benchmarks).
  void wait_copies();
  // Blocks until every queued step has finished and been accounted (device synchronize, and the
  // planner thread has handled every doorbell): stats and the timeline are then complete.
  // Not while a stream of this runtime is being captured.
  void settle();

  // Introspection.
  bool has_gpu() const { return device_ >= 0; }
  // How decode steps hand over to the host: "doorbell" (planner thread + stream memory
  // operations) or "host functions" with the reason doorbells are not used.
  std::string decode_sync() const;
  // The host expert store after start(): its backing and the share of its bytes on transparent
  // huge pages (measured once at start from /proc/self/smaps), e.g. "huge-page advised,
  // registered; 100% of 58.0 GB on huge pages". Empty before start().
  const std::string& host_store() const { return host_store_; }
  int device() const { return device_; }
  int n_layers() const { return n_layers_; }
  int n_expert() const { return n_expert_; }
  int top_k() const { return top_k_; }
  int n_slots() const { return n_slots_; }
  int decode_max_tokens() const { return opt_.decode_max_tokens; }
  const std::string& policy_name() const { return opt_.policy; }
  const ExpertLayout& layout() const { return layout_; }
  bool layer_registered(int layer) const;
  std::vector<LayerStats> layer_stats() const;
  void reset_stats();
  double hint_accuracy() const;
  std::array<double, 3> cost_scales() const;  // cpu, gpu, copy refinement factors
  std::vector<int64_t> mover_stats() const;   // copies_done, bytes_copied, dropped, waits (GPU)
  int resident_experts() const;               // slots holding a ready expert
  // Diagnostics (timeline.h): capacity events from now on (0: off); read after a synchronize.
  void enable_timeline(int64_t capacity) { timeline_.enable(capacity); }
  std::vector<TimelineEvent> timeline_events() const { return timeline_.events(); }
  int64_t timeline_dropped() const { return timeline_.dropped(); }

 private:
  struct Gpu;       // CUDA state (runtime_gpu.cpp); null without a device
  struct LayerCtx;  // per layer buffers, plan and counters
  struct Launch {   // fixed arguments of one (layer, T, hints) decode step
    Runtime* rt;
    LayerCtx* ctx;
    int T, n_hints;
    HintKind hint_kind;
    uint32_t id;  // doorbell value naming this Launch (>= 1)
  };
  // Where each selected expert runs after plan(): slot >= 0 on the GPU, -1 on the CPU.
  struct PlanOut {
    std::vector<cpu::ExpertAssignment> cpu;  // CPU assignments (expert = layer-local id)
    std::vector<int32_t> gpu_token, gpu_slot;
    std::vector<float> gpu_weight;
    std::vector<int> wait_slots;     // prefill: demand fetch slots to wait for
    std::vector<int> acquire_slots;  // distinct GPU slots (acquired or to acquire)
    std::vector<int64_t> acquire_experts;
  };
  enum class Mode { kCpuOnly, kDecode, kPrefill };

  void check_layer(int layer) const;
  void make_engine();  // slots, cost model, cache, policy, scheduler from opt_ (started)
  void quiesce();      // no step queued or running (device synchronize, CPU jobs joined)
  LayerCtx& ctx(int layer);
  // Under mu_: drain mover completions, schedule, decide, count. Fills out (pairs sorted by token).
  void plan(LayerCtx& c, int64_t T, const int32_t* ids, const float* w, const int32_t* hints,
            int n_hints, Mode mode, PlanOut& out);
  // The plan's copies to the mover. Decode defers them until the GPU has its `go` (the mover's
  // lock and wake-up are then off the layer's critical path); every other path copies in plan().
  void issue_copies(LayerCtx& c);
  void issue_copies_locked(LayerCtx& c);  // under mu_
  void drain_completions();               // under mu_
  void release_plan(LayerCtx& c, bool cpu_waited, double cpu_us);
  void record_error(const std::string& what);
  void describe_host_store();        // sets host_store_ (start())
  void host_plan(const Launch& la);  // decode host functions (runtime_gpu.cpp)
  void host_join(const Launch& la);
  // Doorbell decode (runtime_planner.cpp): the planner thread replaces both host functions.
  void init_doorbells();  // mapped words, probe of the stream memory operations
  void enqueue_doorbell_waits(LayerCtx& c, Launch* la, void* stream, bool before_kernel);
  void planner_loop();
  bool planner_step();  // one pass over every layer's doorbells; true: did work
  // Between layers: warm layer `layer`'s predicted CPU experts into the pool's caches (below).
  void start_prewarm(int layer);
  void pause_planner();  // returns once the planner is parked (quiesced runtime)
  void resume_planner();
  void stop_planner();
  static void plan_fn(void* launch);
  static void join_fn(void* launch);
  void init_gpu();                                  // runtime_gpu.cpp: device checks, CUDA state
  bool gpu_fill(int layer, const uint8_t* packed);  // into the pinned store when allocated
  void start_gpu();         // buffers that outlive reconfigure(): store, staging, workspace
  void start_engine_gpu();  // slab, mover, prefill runner; static preload
  void stop_engine_gpu();   // their teardown (quiesced)
  void quiesce_gpu();
  void stop_gpu();
  Launch* launch_for(LayerCtx& c, int T, int n_hints, HintKind hint_kind);
  // Takes plan references on `slots` in the mover if each holds its expert (false: none taken).
  bool acquire_slots(uint64_t plan_id, const std::vector<int>& slots,
                     const std::vector<int64_t>& experts);
  void request_copy(int64_t global_expert, int slot, bool prefetch, uint64_t generation);
  void fill_host_store(int layer, const uint8_t* packed);
  const uint8_t* expert_host_ptr(int layer, int expert) const;
  void decode_cuda(LayerCtx& c, int64_t T, const void* x, const int32_t* ids, const float* w,
                   const void* hints, int n_hints, HintKind hint_kind, void* out, bool out_bf16,
                   void* stream);
  void prefill_cuda(LayerCtx& c, int64_t T, const void* x, const int32_t* ids, const float* w,
                    const int32_t* hints, int n_hints, void* out, bool out_bf16, void* stream);
  void poll_gpu_timing(LayerCtx& c);

  RuntimeOptions opt_;
  int device_ = -1;
  bool started_ = false;
  int n_layers_ = 0, n_expert_ = 0, top_k_ = 0, n_slots_ = 0;
  bool have_layout_ = false;
  ExpertLayout layout_;
  cpu::ThreadPool* pool_ = nullptr;
  bool cpu_caller_helps_ = true;  // forward_cpu's thread computes beside the pool's workers
  std::vector<std::unique_ptr<LayerCtx>> layers_;

  mutable std::mutex mu_;  // the decision engine, stats and plans (host functions + Python thread)
  std::unique_ptr<CostModel> cost_;
  std::unique_ptr<ExpertCache> cache_;
  std::unique_ptr<Policy> policy_;
  std::unique_ptr<Scheduler> sched_;
  std::chrono::steady_clock::time_point t0_;
  uint64_t visits_ = 0;  // layer plans made: the mover's generation clock
  uint64_t plan_ids_ = 0;
  double copy_free_ = 0;  // estimated time the copy engine drains, us since t0_
  double hint_acc_ = 0.8;
  std::vector<int> pending_drop_;  // slots whose dropped prefetch could not be evicted yet

  std::mutex err_mu_;
  std::string error_;
  std::atomic<bool> has_error_{false};

  Timeline timeline_;
  std::unique_ptr<Gpu> gpu_;
  std::string host_store_;  // host_store()
};

}  // namespace hm::runtime
