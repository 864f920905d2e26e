// [NOTE] The mover (DESIGN.md section 3, issue 5 item 3): one thread that owns a copy stream and
// moves experts from the pinned host store into device slab slots.
//
// Protocol (driven by the runtime / the decision engine's ExpertCache, issue 6):
//   request_fetch({expert, slot, prefetch, generation})
//       Asks for `expert` to be copied into `slot`. The slot stops being resident AT ONCE (no new
//       plan may name it), but its bytes are overwritten only once every plan that named it has
//       been released. A newer request for the same slot supersedes an older one not yet started.
//       Demand fetches (prefetch=false) go before prefetches. A prefetch is dropped, not queued
//       forever, when it is stale: its generation is older than set_generation()'s value when the
//       mover reaches it, or more than max_pending_prefetch prefetches wait (the oldest goes).
//       When a request is dropped before its copy started, the slot becomes resident again with
//       what it physically holds.
//   poll_completions() / the completion callback
//       Report 'slot now holds expert' (kReady) only after the copy's CUDA event has completed,
//       and kDropped for dropped requests. The residency seen by acquire() flips at that moment.
//   acquire(plan_id, slots, experts) ... release(plan_id)
//       A plan takes a reference on each slot it names, after checking that the slot is resident
//       with the expected expert (false, and nothing taken, otherwise). release() is called when
//       everything that reads the plan's slots has finished on the GPU (the runtime's join host
//       function). A slot with references is never overwritten.
// The callback runs on the mover thread without the mover's lock held; it must not call CUDA.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cuda/device_slab.h"
#include "cuda/pinned_store.h"

namespace hm::cuda {

struct FetchRequest {
  int64_t expert = -1;      // index into the pinned store
  int slot = -1;            // destination slot of the slab
  bool prefetch = false;    // true: may be dropped when stale
  uint64_t generation = 0;  // the step/layer counter it was issued for (prefetch staleness)
};

enum class FetchStatus : int { kReady = 0, kDropped = 1 };

struct FetchCompletion {
  int64_t expert = -1;
  int slot = -1;
  FetchStatus status = FetchStatus::kReady;
  uint64_t generation = 0;
};

struct MoverStats {
  uint64_t copies_done = 0;        // experts copied and made resident
  uint64_t already_resident = 0;   // requests satisfied without a copy
  uint64_t dropped_stale = 0;      // prefetches older than the current generation
  uint64_t dropped_overflow = 0;   // prefetches dropped because too many waited
  uint64_t superseded = 0;         // requests replaced by a newer one for the same slot
  uint64_t waits_for_release = 0;  // times a copy had to wait for plans to release its slot
  uint64_t bytes_copied = 0;
};

class Mover {
 public:
  // The store and slab must have the same expert layout and outlive the mover.
  Mover(std::shared_ptr<const PinnedExpertStore> store, std::shared_ptr<DeviceSlab> slab,
        int max_in_flight = 4, int max_pending_prefetch = 64);
  ~Mover();  // stops the thread after the copies in flight have completed
  Mover(const Mover&) = delete;
  Mover& operator=(const Mover&) = delete;

  void request_fetch(const FetchRequest& r);  // ValueError on a bad expert or slot
  void set_generation(uint64_t g);            // prefetches with generation < g are stale
  std::vector<FetchCompletion> poll_completions();
  void set_completion_callback(std::function<void(const FetchCompletion&)> cb);

  bool acquire(uint64_t plan_id, const int* slots, const int64_t* experts, int n);
  void release(uint64_t plan_id);  // ValueError for an unknown plan id

  int64_t resident_expert(int slot) const;  // -1 when the slot may not be named by a plan
  std::vector<int64_t> residency() const;   // resident_expert for every slot
  int slot_refs(int slot) const;
  bool idle() const;  // nothing queued and nothing in flight
  void wait_idle();   // blocks until idle() (pending waits on releases!)
  MoverStats stats() const;
  const DeviceSlab& slab() const { return *slab_; }
  const PinnedExpertStore& store() const { return *store_; }

 private:
  void copy_and_convert(const FetchRequest& r);  // q8_rows16 stores: staging buffer + conversion
  struct Slot {
    int64_t physical = -1;  // expert whose bytes the slot holds (-1: none / being overwritten)
    int64_t resident = -1;  // expert plans may name (-1: none)
    int refs = 0;           // outstanding plan references
    bool copying = false;   // a copy into the slot is in flight
  };
  struct InFlight {
    FetchRequest req;
    void* event = nullptr;  // cudaEvent_t
  };

  void run();
  void check_slot(int slot) const;
  void finish(const FetchCompletion& c, std::vector<FetchCompletion>& out);  // under lock

  std::shared_ptr<const PinnedExpertStore> store_;
  std::shared_ptr<DeviceSlab> slab_;
  const int max_in_flight_;
  const int max_pending_prefetch_;
  void* stream_ = nullptr;  // cudaStream_t
  // q8_rows16 stores (see the ctor): two staging buffers of one expert used in turn, the
  // conversion stream, and per buffer "copied" (copy stream) and "free" (conversion stream) events.
  struct Staging {
    uint8_t* buf = nullptr;
    void* copied = nullptr;  // cudaEvent_t
    void* free = nullptr;    // cudaEvent_t
  };
  Staging staging_[2];
  int next_staging_ = 0;
  void* convert_stream_ = nullptr;  // cudaStream_t; null: GGUF store, copies go to the slot
  std::vector<void*> free_events_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // wakes the mover thread
  std::condition_variable idle_cv_;  // wakes wait_idle()
  std::vector<Slot> slots_;
  std::deque<FetchRequest> demand_, prefetch_;
  std::vector<InFlight> in_flight_;
  std::unordered_map<uint64_t, std::vector<int>> plans_;
  std::vector<FetchCompletion> completions_;
  std::function<void(const FetchCompletion&)> callback_;
  uint64_t generation_ = 0;
  MoverStats stats_;
  bool stop_ = false;
  std::string error_;  // first CUDA error seen on the mover thread, re-raised to callers
  std::thread thread_;
};

}  // namespace hm::cuda
