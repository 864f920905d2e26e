// [NOTE] Timeline: host-clock events of the runtime's decode path, for diagnostics (where does a
// layer's time go: enqueue, stream latency to the plan host function, planning, CPU wait, join).
// Off by default (capacity 0: record() is one relaxed load). Recording is lock-free: an atomic
// index into a buffer fixed by enable(); events past the capacity are counted, not stored.
// Readers call events() only while nothing records (after a synchronize).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

namespace hm::runtime {

enum class TimelineKind : int32_t {
  kEnqueueBegin = 0,   // forward_cuda entered (caller's thread)
  kEnqueueEnd = 1,     // forward_cuda returned: everything queued on the stream
  kPlanBegin = 2,      // plan host function started (the stream reached it)
  kPlanEnd = 3,        // plan done, CPU job submitted; a = CPU experts, b = GPU experts
  kJoinBegin = 4,      // join host function started (the decode kernel finished)
  kCpuDone = 5,        // CPU job joined; a = 1 when the join had to wait for it
  kJoinEnd = 6,        // slots and pins released
  kCopyDone = 7,       // an expert copy landed (mover thread); a = slot
  kPlanInputs = 8,     // inside the plan: inputs converted (x to fp32, hint top-k)
  kPlanScheduled = 9,  // inside the plan: scheduled, slots taken (not yet handed off)
};

struct TimelineEvent {
  double t_us = 0;  // microseconds since the runtime's creation (steady clock)
  int32_t layer = -1;
  int32_t kind = 0;
  int32_t a = 0, b = 0;
};

class Timeline {
 public:
  explicit Timeline(std::chrono::steady_clock::time_point t0) : t0_(t0) {}

  // Not thread-safe against record(): call while the runtime is idle.
  void enable(int64_t capacity) {
    buf_.assign(static_cast<std::size_t>(capacity > 0 ? capacity : 0), TimelineEvent{});
    next_.store(0, std::memory_order_relaxed);
    capacity_.store(capacity > 0 ? capacity : 0, std::memory_order_release);
  }

  bool on() const { return capacity_.load(std::memory_order_relaxed) > 0; }

  void record(int layer, TimelineKind kind, int32_t a = 0, int32_t b = 0) {
    const int64_t cap = capacity_.load(std::memory_order_acquire);
    if (cap == 0) return;
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= cap) return;
    TimelineEvent& e = buf_[static_cast<std::size_t>(i)];
    e.t_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0_).count();
    e.layer = layer;
    e.kind = static_cast<int32_t>(kind);
    e.a = a;
    e.b = b;
  }

  // Events recorded so far (at most the capacity), in index order; dropped() = those past it.
  std::vector<TimelineEvent> events() const {
    const int64_t n = std::min<int64_t>(next_.load(std::memory_order_acquire),
                                        capacity_.load(std::memory_order_acquire));
    return {buf_.begin(), buf_.begin() + n};
  }
  int64_t dropped() const {
    const int64_t n = next_.load(std::memory_order_acquire),
                  c = capacity_.load(std::memory_order_acquire);
    return n > c ? n - c : 0;
  }

 private:
  std::chrono::steady_clock::time_point t0_;
  std::vector<TimelineEvent> buf_;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> capacity_{0};
};

}  // namespace hm::runtime
