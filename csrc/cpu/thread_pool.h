// [NOTE] Persistent worker pool for the CPU expert kernels.
//
// A job is a short list of phases; each phase has a fixed number of independent items. Workers
// take items from one global ticket counter, so phases run in order with an implicit barrier: a
// ticket of phase p+1 waits until every item of phase p has finished (done counter). This gives
// "all gate/up rows of all experts, barrier, all down rows" without a second synchronisation tool.
// A job that knows finer dependencies replaces a phase's barrier by its own per-item readiness
// (Job::barrier / ready / item_done: dataflow, e.g. one expert's down rows after that expert's
// gate/up rows only). While it waits, a worker lets its item warm up (Job::warm: prefetch weights).
// cpu/pool_trace.h records where a job's time goes when tracing is on.
//
// - Workers are created once, spin briefly (HYBRID_MOE_SPIN_US, default 100 us) when idle, then
//   sleep on a condition variable; they are pinned one per physical core when Linux allows it.
// - submit() returns a JobHandle at once (non-blocking); JobHandle::wait() joins and rethrows the
//   first exception any item threw (later items of a failed job are skipped, not run).
// - Jobs are owned by shared_ptr: the pool holds one until its last item ends (a worker's hand-off
//   slot until that worker next looks for work), the handle holds one until it is dropped, so no
//   per-call state outlives them (no leaks, no dangling callbacks).
// - A thread takes its next item's ticket one item early while many are left and lets the job
//   prepare() that item as the current one runs (HYBRID_MOE_LOOKAHEAD=0 turns it off; lent Xeon,
//   T=1 Q8_0 layer: 0.827 of the DRAM reader with it, 0.802 without; bench/RESULTS.md, session 13).
// - Jobs run one after another in submission order (FIFO). The caller's thread computes only when
//   it asks to: JobHandle::help() (the runtime's planner thread, idle until the job ends anyway).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/pool_trace.h"

namespace hm::cpu {

// Work of one job. items(p) is fixed when the job is submitted; run(p, i) may throw.
class Job {
 public:
  virtual ~Job() = default;
  virtual int phases() const = 0;
  virtual int64_t items(int phase) const = 0;
  virtual void run(int phase, int64_t item) = 0;
  // Optional: a worker that already holds item `item` of phase p while earlier phases still run
  // (it would spin at the phase barrier) calls warm(p, item, 0), warm(p, item, 1), ... until it
  // returns false or the barrier clears. Lets the item fetch inputs no earlier phase writes (the
  // CPU MoE layer prefetches its weight rows into L2), so barrier time streams DRAM instead of
  // idling. May throw like run().
  virtual bool warm(int /*phase*/, int64_t /*item*/, int64_t /*step*/) { return false; }
  // Dependencies. By default an item of phase p starts once every item of the earlier phases has
  // ended (barrier(p) true). For a phase whose barrier(p) is false the pool polls ready(p, item)
  // instead (warm() runs meanwhile), and it calls item_done(p, item) after every item of every
  // phase, run or skipped after a failure, so a job's own counters always complete. ready() may
  // depend only on items of lower tickets (earlier phases, or earlier items of its phase): tickets
  // are taken in order, so those are held by running threads and end; nothing deadlocks.
  // item_done must not throw.
  virtual bool barrier(int /*phase*/) const { return true; }
  virtual bool ready(int /*phase*/, int64_t /*item*/) const { return true; }
  virtual void item_done(int /*phase*/, int64_t /*item*/) noexcept {}
  // Optional: `item` of `phase` is the next item this thread runs, after the one it runs now
  // ends (the pool takes a thread's next ticket one item early while many are left). Lets the
  // item start fetching inputs no earlier item writes (the CPU MoE layer: the first bytes of its
  // weight streams into L2) so that it does not start with a round trip to DRAM.
  virtual void prepare(int /*phase*/, int64_t /*item*/) noexcept {}

 private:
  friend class ThreadPool;
  friend class JobHandle;
  // Pool bookkeeping, set by ThreadPool::submit. Every item reads the first group and does an
  // atomic add on next_ and on done_: each counter has a cache line of its own so that one
  // thread's add does not take the line that the others read or add to (false sharing).
  std::vector<int64_t> phase_end_;  // cumulative item counts: phase p owns [end[p-1], end[p])
  int64_t total_ = 0;
  uint64_t id_ = 0;
  class ThreadPool* pool_ = nullptr;  // the pool it was submitted to (help() finishes it there)
  std::unique_ptr<PoolTrace> trace_;  // set at submit while pool tracing is on
  std::atomic<bool> failed_{false};   // written only when an item throws
  alignas(64) std::atomic<int64_t> next_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<bool> finished_{false};  // polled by a waiting caller
  std::exception_ptr error_;
  std::mutex m_;
  std::condition_variable cv_;
};

// Returned by submit(): wait() blocks until the job has finished and rethrows its first error.
class JobHandle {
 public:
  JobHandle() = default;
  explicit JobHandle(std::shared_ptr<Job> job) : job_(std::move(job)) {}
  bool valid() const { return job_ != nullptr; }
  bool done() const { return !job_ || job_->finished_.load(std::memory_order_acquire); }
  void wait();  // joins; rethrows; the handle stays valid (a second wait() rethrows again)
  // Runs items of the job on the calling thread, beside the pool's workers, until no item is left
  // to take (items other threads hold may still run: wait() joins them). Never throws: an item's
  // exception is rethrown by wait(). For a thread that would otherwise idle until the job ends.
  void help();
  Job* job() const { return job_.get(); }

 private:
  std::shared_ptr<Job> job_;
};

class ThreadPool {
 public:
  // threads <= 0: physical cores (HYBRID_MOE_THREADS overrides). pin: one worker per core.
  explicit ThreadPool(int threads = 0, bool pin = true);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }
  bool pinned() const { return pinned_; }

  JobHandle submit(std::shared_ptr<Job> job);
  // Hint that a job comes soon: sleeping workers wake and spin (HYBRID_MOE_SPIN_US) for it, then
  // sleep again if none came. A submit after an idle gap longer than the spin otherwise pays the
  // wake-up from sleep (14.5 us pool round trip back to back vs 109 us after a 2 ms pause, lent
  // Xeon); calling wake() ~0.1 ms before such a submit hides it. Cheap; callable from any thread.
  void wake();
  void run(std::shared_ptr<Job> job) { submit(std::move(job)).wait(); }
  // Convenience: fn(i) for i in [0, n) on the workers; blocks; rethrows.
  void parallel_for(int64_t n, std::function<void(int64_t)> fn);

 private:
  // Guards queue_: held for a scan, push or erase only (tens of ns). A spin lock rather than a
  // mutex: when a job arrives every spinning worker takes it at once, and a contended mutex
  // hands it from sleeper to sleeper through futex wake-ups (tens of us per small job measured
  // on the lent Xeon with 14-16 workers).
  class QueueLock {
   public:
    void lock();
    void unlock();

   private:
    std::atomic<bool> busy_{false};
  };

  // One per worker: submit() hands each worker the new job here, so that a spinning worker
  // picks it up without queue_lock_ (15 workers passing that one lock took their first items
  // ~0.55 us apart on the lent Xeon, bench/RESULTS.md session 12). A fast path only: queue_
  // stays the record, and a worker whose slot holds any job but the next one reads the queue.
  struct alignas(64) Slot {
    QueueLock lock;
    std::shared_ptr<Job> job;  // guarded by lock
  };

  friend class JobHandle;  // help() runs work_on on the caller's thread

  void worker_loop(int index);
  void work_on(Job& job);
  void finish(Job& job);
  std::shared_ptr<Job> next_job(uint64_t last_id);  // first queued job newer than last_id
  std::shared_ptr<Job> take_job(int worker, uint64_t last_id);  // slot, else next_job
  void publish();  // bump the epoch; wake sleeping workers (only if there are any)

  std::vector<std::thread> workers_;
  std::unique_ptr<Slot[]> slots_;  // one per worker
  bool lookahead_ = true;          // HYBRID_MOE_LOOKAHEAD
  QueueLock queue_lock_;
  std::deque<std::shared_ptr<Job>> queue_;  // guarded by queue_lock_
  uint64_t next_id_ = 1;                    // guarded by queue_lock_
  std::mutex sleep_m_;                      // only for sleeping and waking workers
  std::condition_variable sleep_cv_;
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> epoch_{0};  // bumped on every submit and wake(); idle workers spin on it
  std::atomic<bool> stop_{false};
  bool pinned_ = false;
  int spin_us_ = 100;
};

// Default thread count: HYBRID_MOE_THREADS if set (>= 1), else physical_cores().
int default_threads();

// One process-wide pool per thread count, created on first use (the Python face uses these).
ThreadPool& shared_pool(int threads = 0);

// For a blocking call on `threads` computing threads (0: default_threads()), made from a thread
// that would otherwise wait: with threads >= 2, a shared pool of threads - 1 workers and the
// calling thread computing beside them (JobHandle::help); with threads == 1 (or
// HYBRID_MOE_CALLER_HELPS=0, kept for measurements) a pool of `threads` workers and a caller that
// waits. Why: on the lent 16-core Xeon, 16 pinned workers plus a waiting caller time-sliced one
// core and paid a ~30-40 us wake-up of the caller at the join (bench/RESULTS.md, session 9).
struct CallerPool {
  ThreadPool* pool;
  bool caller_helps;
};
CallerPool caller_pool(int threads = 0);

}  // namespace hm::cpu
