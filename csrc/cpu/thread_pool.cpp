#include "cpu/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "core/check.h"
#include "core/env_choice.h"
#include "cpu/isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HM_PAUSE() _mm_pause()
#else
#define HM_PAUSE() std::this_thread::yield()
#endif
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace hm::cpu {
namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  HM_CHECK(end && *end == '\0', "environment variable ", name, "='", v, "' is not an integer");
  return static_cast<int>(n);
}

// One logical CPU per physical core among those this process may use, in CPU order.
std::vector<int> one_cpu_per_core() {
  std::vector<int> cpus;
#if defined(__linux__)
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) != 0) return cpus;
  std::set<std::pair<int, int>> seen;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &mask)) continue;
    const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream core_f(base + "core_id"), pkg_f(base + "physical_package_id");
    int core = cpu, pkg = 0;
    if (!(core_f >> core) || !(pkg_f >> pkg)) core = cpu, pkg = 0;
    if (seen.emplace(pkg, core).second) cpus.push_back(cpu);
  }
#endif
  return cpus;
}

bool pin_to(std::thread& t, int cpu) {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(t.native_handle(), sizeof(set), &set) == 0;
#else
  return false;
#endif
}

// Index of the pool worker running on this thread (-1: not a worker), for the trace.
thread_local int tl_worker_index = -1;

}  // namespace

int default_threads() {
  const int n = env_int("HYBRID_MOE_THREADS", 0);
  HM_CHECK(n >= 0, "HYBRID_MOE_THREADS must be >= 1, got ", n);
  return n > 0 ? n : physical_cores();
}

void JobHandle::wait() {
  HM_CHECK(job_ != nullptr, "JobHandle::wait on an empty handle");
  // Spin briefly (~100 us): the runtime's join usually arrives when the job is nearly done. The
  // caller is not pinned and may share a core with a pinned worker, so the spin yields: a worker
  // with items left gets the core at once instead of after a scheduler tick.
  const auto spin_end = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
  while (!job_->finished_.load(std::memory_order_acquire)) {
    for (int i = 0; i < 8; ++i) HM_PAUSE();
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() > spin_end) break;
  }
  if (!job_->finished_.load(std::memory_order_acquire)) {
    std::unique_lock<std::mutex> lk(job_->m_);
    job_->cv_.wait(lk, [&] { return job_->finished_.load(std::memory_order_acquire); });
  }
  if (job_->error_) std::rethrow_exception(job_->error_);
}

void JobHandle::help() {
  // pool_ is null for a job that had no items (finished at submit).
  if (!job_ || job_->pool_ == nullptr || job_->finished_.load(std::memory_order_acquire)) return;
  job_->pool_->work_on(*job_);  // catches the items' exceptions into the job
}

ThreadPool::ThreadPool(int threads, bool pin) {
  if (threads <= 0) threads = default_threads();
  HM_CHECK(threads >= 1 && threads <= 1024, "threads must be in [1, 1024], got ", threads);
  spin_us_ = std::max(0, env_int("HYBRID_MOE_SPIN_US", 100));
  lookahead_ = env_choice("HYBRID_MOE_LOOKAHEAD", {"0", "1"}) != 0;
  slots_ = std::make_unique<Slot[]>(threads);
  const std::vector<int> cpus = pin ? one_cpu_per_core() : std::vector<int>{};
  // Pin only when every worker gets its own core; otherwise let the OS balance.
  pinned_ = pin && !cpus.empty() && static_cast<int>(cpus.size()) >= threads;
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
    if (pinned_ && !pin_to(workers_.back(), cpus[i])) pinned_ = false;
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_seq_cst);
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  {
    std::lock_guard<std::mutex> lk(sleep_m_);  // a worker between its check and its sleep
  }
  sleep_cv_.notify_all();
  for (auto& t : workers_) t.join();
  slots_.reset();
  // Jobs still queued (their handles may live on) are failed so that wait() returns.
  for (auto& job : queue_) {
    std::lock_guard<std::mutex> lk(job->m_);
    if (!job->error_)
      job->error_ = std::make_exception_ptr(RuntimeError("thread pool destroyed before job ran"));
    job->finished_.store(true, std::memory_order_release);
    job->cv_.notify_all();
  }
}

void ThreadPool::QueueLock::lock() {
  while (busy_.exchange(true, std::memory_order_acquire))
    while (busy_.load(std::memory_order_relaxed)) HM_PAUSE();
}

void ThreadPool::QueueLock::unlock() {
  busy_.store(false, std::memory_order_release);
}

void ThreadPool::publish() {
  // seq_cst pairs with the sleeper's seq_cst increment and epoch check (worker_loop): either this
  // load sees the sleeper, or the sleeper's check sees the new epoch. No syscall while every
  // worker spins.
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    {
      std::lock_guard<std::mutex> lk(sleep_m_);
    }
    sleep_cv_.notify_all();
  }
}

JobHandle ThreadPool::submit(std::shared_ptr<Job> job) {
  HM_CHECK(job != nullptr, "ThreadPool::submit: job must not be null");
  const int phases = job->phases();
  HM_CHECK(phases >= 0, "job phases must be >= 0, got ", phases);
  job->phase_end_.assign(phases, 0);
  int64_t total = 0;
  for (int p = 0; p < phases; ++p) {
    const int64_t n = job->items(p);
    HM_CHECK(n >= 0, "job phase ", p, " has a negative item count ", n);
    total += n;
    job->phase_end_[p] = total;
  }
  job->total_ = total;
  if (pool_tracing() && total > 0) {
    job->trace_ = std::make_unique<PoolTrace>();
    job->trace_->submit_ns = monotonic_ns();
    job->trace_->workers = size();
    for (int p = 0; p < phases; ++p) job->trace_->phase_items.push_back(job->items(p));
    job->trace_->items.resize(static_cast<std::size_t>(total));
  }
  if (total == 0) {
    job->finished_.store(true, std::memory_order_release);
    return JobHandle(std::move(job));
  }
  HM_CHECK_RT(!stop_.load(std::memory_order_acquire), "ThreadPool::submit after shutdown");
  job->pool_ = this;
  {
    std::lock_guard<QueueLock> lk(queue_lock_);
    job->id_ = next_id_++;
    queue_.push_back(job);
  }
  // Each worker's copy before the epoch moves: a worker that sees the new epoch finds it there.
  // An older job a slot still holds (its worker took that one from the queue) is released here,
  // outside the slot's lock.
  for (int w = 0; w < size(); ++w) {
    std::shared_ptr<Job> older = job;
    {
      std::lock_guard<QueueLock> lk(slots_[w].lock);
      std::swap(older, slots_[w].job);
    }
  }
  publish();
  return JobHandle(std::move(job));
}

void ThreadPool::wake() {
  publish();
}

void ThreadPool::parallel_for(int64_t n, std::function<void(int64_t)> fn) {
  struct ForJob final : Job {
    int64_t n;
    std::function<void(int64_t)> fn;
    int phases() const override { return 1; }
    int64_t items(int) const override { return n; }
    void run(int, int64_t i) override { fn(i); }
  };
  auto job = std::make_shared<ForJob>();
  job->n = n;
  job->fn = std::move(fn);
  run(job);
}

std::shared_ptr<Job> ThreadPool::next_job(uint64_t last_id) {
  std::lock_guard<QueueLock> lk(queue_lock_);
  for (auto& q : queue_)
    if (q->id_ > last_id) return q;
  return nullptr;
}

std::shared_ptr<Job> ThreadPool::take_job(int worker, uint64_t last_id) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard<QueueLock> lk(slots_[worker].lock);
    job = std::move(slots_[worker].job);  // the slot empties either way
  }
  // Ids are consecutive, so id last_id + 1 is the next job in submission order. Any other job
  // (older: run already; newer: a job in between may still be queued) is left to the queue.
  if (job && job->id_ == last_id + 1) return job;
  return next_job(last_id);
}

void ThreadPool::worker_loop(int index) {
  tl_worker_index = index;
  uint64_t last_id = 0;
  for (;;) {
    std::shared_ptr<Job> job;
    for (;;) {
      const uint64_t seen = epoch_.load(std::memory_order_seq_cst);
      if (stop_.load(std::memory_order_acquire)) return;
      if ((job = take_job(index, last_id))) break;
      // Spin a little before sleeping: decode layers arrive every few hundred microseconds.
      // The spin yields so that a thread waiting for this core (the unpinned caller, woken by
      // the end of a job) runs at once rather than after the spin or a scheduler tick.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
      bool changed = false;
      // The epoch is read every 8 pauses (64 pauses take ~3-4 us on the lent Xeon: a job would
      // wait that long to be seen), the clock and the yield every 64.
      while (!changed) {
        for (int i = 0; i < 8 && !changed; ++i) {
          for (int j = 0; j < 8; ++j) HM_PAUSE();
          changed = epoch_.load(std::memory_order_acquire) != seen;
        }
        if (changed) break;
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() > deadline) break;
      }
      if (changed) continue;
      std::unique_lock<std::mutex> lk(sleep_m_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      sleep_cv_.wait(lk, [&] {
        return stop_.load(std::memory_order_seq_cst) ||
               epoch_.load(std::memory_order_seq_cst) != seen;
      });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    last_id = job->id_;
    work_on(*job);
  }
}

void ThreadPool::work_on(Job& job) {
  const auto record_error = [&job] {
    std::lock_guard<std::mutex> lk(job.m_);
    if (!job.error_) job.error_ = std::current_exception();
    job.failed_.store(true, std::memory_order_relaxed);
  };
  const auto phase_of = [&job](int64_t ticket) {
    int p = 0;
    while (ticket >= job.phase_end_[p]) ++p;
    return p;
  };
  // Lookahead: while more than `margin` tickets are left, a thread takes its next ticket before
  // it runs the current item and lets that item prepare() (fetch its first weight bytes) in the
  // meantime, except from a phase's last ticket. Near the end it takes tickets one at a time so
  // that the last items go to the threads that are free first. Deadlock-free as before: the lowest
  // unfinished ticket is always one a thread runs or waits on, never one held ahead, since a
  // held-ahead ticket is higher than the one its thread runs.
  const int64_t margin = lookahead_ ? 2 * (static_cast<int64_t>(size()) + 1) : job.total_;
  int64_t ticket = job.next_.fetch_add(1, std::memory_order_relaxed);
  while (ticket < job.total_) {
    const int p = phase_of(ticket);
    const int64_t start = p > 0 ? job.phase_end_[p - 1] : 0;
    const int64_t item = ticket - start;
    PoolTraceItem* trace = job.trace_ ? &job.trace_->items[ticket] : nullptr;
    if (trace) *trace = {tl_worker_index, p, item, monotonic_ns(), 0, 0};
    // Phase barrier: tickets are handed out in order, so waiting for the count of finished items
    // to reach this phase's start waits exactly for all earlier phases. A dataflow phase asks the
    // job instead. Before spinning, the item warms up step by step for as long as it must wait.
    const bool barrier = job.barrier(p);
    const auto cleared = [&] {
      return barrier ? job.done_.load(std::memory_order_acquire) >= start : job.ready(p, item);
    };
    if (!cleared() && !job.failed_.load(std::memory_order_relaxed)) {
      try {
        for (int64_t s = 0; !cleared() && job.warm(p, item, s); ++s) {
        }
      } catch (...) {
        record_error();
      }
    }
    for (int spins = 0; !cleared(); ++spins) {
      if (spins < 4096) {
        HM_PAUSE();
      } else {
        std::this_thread::yield();
      }
    }
    if (trace) trace->ready_ns = monotonic_ns();
    int64_t next = -1;
    // Not from a phase's last ticket: an item of the next phase may wait for this one (the MoE
    // layer's single input-packing item), so nothing delays its start.
    if (ticket + margin < job.total_ && ticket + 1 < job.phase_end_[p]) {
      next = job.next_.fetch_add(1, std::memory_order_relaxed);
      if (next < job.total_ && !job.failed_.load(std::memory_order_relaxed)) {
        const int pn = phase_of(next);
        job.prepare(pn, next - (pn > 0 ? job.phase_end_[pn - 1] : 0));
      }
    }
    if (!job.failed_.load(std::memory_order_relaxed)) {
      try {
        job.run(p, item);
      } catch (...) {
        record_error();
      }
    }
    if (trace) trace->end_ns = monotonic_ns();  // before item_done: dependants start after it
    job.item_done(p, item);
    if (job.done_.fetch_add(1, std::memory_order_acq_rel) + 1 == job.total_) finish(job);
    ticket = next >= 0 ? next : job.next_.fetch_add(1, std::memory_order_relaxed);
  }
}

void ThreadPool::finish(Job& job) {
  if (job.trace_) {
    job.trace_->finish_ns = monotonic_ns();
    keep_pool_trace(std::move(*job.trace_));
    job.trace_.reset();
  }
  {
    std::lock_guard<QueueLock> lk(queue_lock_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (it->get() == &job) {
        queue_.erase(it);
        break;
      }
  }
  {
    std::lock_guard<std::mutex> lk(job.m_);
    job.finished_.store(true, std::memory_order_release);
  }
  job.cv_.notify_all();
}

ThreadPool& shared_pool(int threads) {
  if (threads <= 0) threads = default_threads();
  static std::mutex m;
  // Never destroyed: workers may still sleep in the pool when the process exits.
  static auto* pools = new std::map<int, std::unique_ptr<ThreadPool>>();
  std::lock_guard<std::mutex> lk(m);
  auto& p = (*pools)[threads];
  if (!p) p = std::make_unique<ThreadPool>(threads, true);
  return *p;
}

CallerPool caller_pool(int threads) {
  static const bool helps = env_choice("HYBRID_MOE_CALLER_HELPS", {"0", "1"}) != 0;
  if (threads <= 0) threads = default_threads();
  HM_CHECK(threads <= 1024, "threads must be in [1, 1024], got ", threads);
  if (helps && threads >= 2) return {&shared_pool(threads - 1), true};
  return {&shared_pool(threads), false};
}

}  // namespace hm::cpu
