// [NOTE] Optional record of where a pool job's time goes (bench/trace_cpu_layer.py reads it).
//
// While tracing is on, every job submitted to any ThreadPool records, per item: the worker that
// ran it (-1: a caller's thread in JobHandle::help), when it turned to the item, when the
// item's dependencies cleared (phase barrier or Job::ready) and when the item ended; per job:
// submit and finish. The last finished traced job's record is kept for last_pool_trace().
// Off by default: one pointer test per item. Times are CLOCK_MONOTONIC nanoseconds, the clock of
// Python's time.perf_counter_ns() on Linux, so a caller can place its own timestamps beside them.
#pragma once

#include <cstdint>
#include <vector>

namespace hm::cpu {

struct PoolTraceItem {
  int32_t worker = -1;  // pool worker index; -1 for a helping caller thread
  int32_t phase = 0;
  int64_t item = 0;      // index within the phase
  int64_t take_ns = 0;   // the thread turned to the item (its ticket may be taken an item early)
  int64_t ready_ns = 0;  // dependencies cleared (== take_ns when there was nothing to wait for)
  int64_t end_ns = 0;    // item returned (or was skipped after a failure)
};

struct PoolTrace {
  int64_t submit_ns = 0, finish_ns = 0;
  int workers = 0;                   // size of the pool that ran it
  std::vector<int64_t> phase_items;  // items per phase
  std::vector<PoolTraceItem> items;  // in ticket order (phase-major)
};

int64_t monotonic_ns();
void set_pool_tracing(bool on);
bool pool_tracing();
// The record of the most recently finished job submitted while tracing was on (empty items if
// none has finished yet).
PoolTrace last_pool_trace();
// Called by the pool when a traced job finishes.
void keep_pool_trace(PoolTrace trace);

}  // namespace hm::cpu
