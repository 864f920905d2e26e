// Thread pool: every item runs once, phases are ordered (barrier), exceptions reach wait(),
// submit is non-blocking and jobs are freed when done.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/check.h"
#include "cpu/thread_pool.h"
#include "hm_test.h"

namespace {

struct PhasedJob final : hm::cpu::Job {
  std::vector<int64_t> n;
  std::vector<std::atomic<int>> hits;
  std::thread::id helper;  // items run on this thread are counted in by_helper
  std::atomic<int> by_helper{0};
  std::chrono::microseconds item_time{0};
  std::atomic<int> phase1_started_early{0};
  std::atomic<int64_t> phase0_done{0};
  int64_t throw_at = -1;
  explicit PhasedJob(std::vector<int64_t> sizes) : n(std::move(sizes)), hits(n[0] + n[1]) {}
  int phases() const override { return 2; }
  int64_t items(int p) const override { return n[p]; }
  void run(int p, int64_t i) override {
    if (std::this_thread::get_id() == helper) by_helper++;
    if (item_time.count() > 0) std::this_thread::sleep_for(item_time);
    if (p == 0) {
      if (i == throw_at) throw std::runtime_error("item failed");
      hits[i]++;
      phase0_done++;
    } else {
      if (phase0_done.load() != n[0]) phase1_started_early++;
      hits[n[0] + i]++;
    }
  }
};

}  // namespace

HM_TEST(thread_pool_runs_every_item_once_in_phase_order) {
  hm::cpu::ThreadPool pool(4, false);
  HM_EXPECT(pool.size() == 4);
  for (int rep = 0; rep < 20; ++rep) {
    auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{37, 53});
    pool.run(job);
    for (auto& h : job->hits) HM_EXPECT(h.load() == 1);
    HM_EXPECT(job->phase1_started_early.load() == 0);
  }
}

HM_TEST(thread_pool_exception_reaches_wait) {
  hm::cpu::ThreadPool pool(3, true);
  auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{10, 10});
  job->throw_at = 5;
  auto h = pool.submit(job);
  HM_EXPECT_THROWS(h.wait(), std::runtime_error);
  HM_EXPECT(h.done());
  // The pool keeps working after a failed job.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, [&](int64_t i) { sum += i; });
  HM_EXPECT(sum.load() == 4950);
}

HM_TEST(thread_pool_submit_is_non_blocking_and_frees_jobs) {
  hm::cpu::ThreadPool pool(2, false);
  std::weak_ptr<PhasedJob> weak;
  {
    std::vector<hm::cpu::JobHandle> handles;
    for (int j = 0; j < 8; ++j) {
      auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{16, 16});
      if (j == 0) weak = job;
      handles.push_back(pool.submit(job));
    }
    for (auto& h : handles) h.wait();
    HM_EXPECT(!weak.expired());  // the handle still owns it
  }
  HM_EXPECT(weak.expired());  // handles dropped, pool released it: nothing leaked
  auto empty = std::make_shared<PhasedJob>(std::vector<int64_t>{0, 0});
  auto h = pool.submit(empty);
  HM_EXPECT(h.done());
  h.wait();
}

HM_TEST(thread_pool_helper_thread_computes_items) {
  hm::cpu::ThreadPool pool(2, false);
  int helped = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{12, 12});
    job->helper = std::this_thread::get_id();
    job->item_time = std::chrono::microseconds(200);  // long enough that the helper gets items
    auto h = pool.submit(job);
    h.help();  // returns once no item is left to take
    h.wait();
    for (auto& x : job->hits) HM_EXPECT(x.load() == 1);
    HM_EXPECT(job->phase1_started_early.load() == 0);
    helped += job->by_helper.load();
  }
  HM_EXPECT(helped > 0);
  // An item that throws on the helper's thread reaches wait(), not help().
  auto bad = std::make_shared<PhasedJob>(std::vector<int64_t>{40, 4});
  bad->throw_at = 39;
  auto hb = pool.submit(bad);
  hb.help();
  HM_EXPECT_THROWS(hb.wait(), std::runtime_error);
  // Finished, empty and default handles: help() returns at once.
  hb.help();
  hm::cpu::JobHandle none;
  none.help();
  auto empty = pool.submit(std::make_shared<PhasedJob>(std::vector<int64_t>{0, 0}));
  empty.help();
  HM_EXPECT(empty.done());
}

HM_TEST(thread_pool_rejects_bad_sizes) {
  HM_EXPECT_THROWS(hm::cpu::ThreadPool too_big(2000, false), hm::ValueError);
  hm::cpu::ThreadPool pool(1, false);
  HM_EXPECT_THROWS(pool.submit(nullptr), hm::ValueError);
}

namespace {

// Phase 0 has one item that holds the barrier until some phase-1 item has warmed (or 5 s pass);
// warm records (phase, item, step) and stops after 3 steps, or throws when asked to.
struct WarmJob final : hm::cpu::Job {
  std::atomic<int> warm_calls{0}, warm_bad{0};
  bool warm_throws = false;
  int phases() const override { return 2; }
  int64_t items(int p) const override { return p == 0 ? 1 : 6; }
  void run(int p, int64_t) override {
    if (p == 0) {
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (warm_calls.load() == 0 && std::chrono::steady_clock::now() < end)
        std::this_thread::yield();
    }
  }
  bool warm(int p, int64_t item, int64_t step) override {
    if (p != 1 || item < 0 || item >= 6 || step < 0 || step > 3) warm_bad++;
    warm_calls++;
    if (warm_throws) throw std::runtime_error("warm failed");
    return step < 3;
  }
};

}  // namespace

HM_TEST(thread_pool_warms_items_waiting_at_a_barrier) {
  hm::cpu::ThreadPool pool(2, false);
  auto job = std::make_shared<WarmJob>();
  pool.run(job);
  HM_EXPECT(job->warm_calls.load() >= 1);  // the second worker warmed while phase 0 ran
  HM_EXPECT(job->warm_bad.load() == 0);
  auto failing = std::make_shared<WarmJob>();
  failing->warm_throws = true;
  auto h = pool.submit(failing);
  HM_EXPECT_THROWS(h.wait(), std::runtime_error);
}

HM_TEST(thread_pool_wake_hint_keeps_the_pool_working) {
  hm::cpu::ThreadPool pool(3, false);
  for (int rep = 0; rep < 50; ++rep) {
    pool.wake();  // idle workers wake and spin; the job that follows (or none) runs as usual
    if (rep % 5 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
    auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{7, 9});
    pool.run(job);
    for (auto& h : job->hits) HM_EXPECT(h.load() == 1);
    HM_EXPECT(job->phase1_started_early.load() == 0);
  }
  pool.wake();  // a hint with no job after it, then destruction: workers must still stop
}

// Jobs from several threads while workers move between spinning and sleeping (spin 0 us and
// 20 us, with pauses longer than the spin): no job is lost, none runs twice, none hangs.
HM_TEST(thread_pool_hand_off_survives_sleep_and_concurrent_submitters) {
  for (const char* spin : {"0", "20"}) {
    setenv("HYBRID_MOE_SPIN_US", spin, 1);
    hm::cpu::ThreadPool pool(4, false);
    unsetenv("HYBRID_MOE_SPIN_US");
    std::atomic<int> bad{0};
    std::vector<std::thread> submitters;
    for (int s = 0; s < 3; ++s)
      submitters.emplace_back([&pool, &bad, s] {
        for (int rep = 0; rep < 150; ++rep) {
          if ((rep + s) % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(60));
          auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{1 + rep % 3, 2 + s});
          pool.run(job);
          for (auto& h : job->hits)
            if (h.load() != 1) bad++;
          if (job->phase1_started_early.load() != 0) bad++;
        }
      });
    for (auto& t : submitters) t.join();
    HM_EXPECT(bad.load() == 0);
  }
}

namespace {

// Phase 1 is dataflow: phase-1 item i depends on the phase-0 items of group dep(i) only, where
// phase-1 items 0-3 depend on group 1 and items 4-7 on group 0. Group 0's phase-0 items are slow
// (20 ms); the workers that finish group 1's phase 0 must run items 0-3 meanwhile.
struct DataflowJob final : hm::cpu::Job {
  static constexpr int64_t kGroups = 2, kPer = 4;
  std::atomic<int32_t> done0[kGroups] = {};
  std::atomic<int> early{0}, overtook{0}, ran{0};
  int64_t throw_at = -1;
  int phases() const override { return 2; }
  int64_t items(int) const override { return kGroups * kPer; }
  bool barrier(int p) const override { return p != 1; }
  bool ready(int p, int64_t i) const override {
    return p != 1 || done0[dep(i)].load(std::memory_order_acquire) == kPer;
  }
  static int64_t dep(int64_t i) { return 1 - i / kPer; }
  void item_done(int p, int64_t i) noexcept override {
    if (p == 0) done0[i / kPer].fetch_add(1, std::memory_order_release);
  }
  void run(int p, int64_t i) override {
    ran++;
    if (p == 0) {
      if (i == throw_at) throw std::runtime_error("item failed");
      if (i / kPer == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return;
    }
    if (done0[dep(i)].load() != kPer) early++;
    if (dep(i) == 1 && done0[0].load() != kPer) overtook++;
  }
};

}  // namespace

HM_TEST(thread_pool_dataflow_phase_waits_only_for_its_dependencies) {
  hm::cpu::ThreadPool pool(6, false);
  auto job = std::make_shared<DataflowJob>();
  pool.run(job);
  HM_EXPECT(job->ran.load() == 16);
  HM_EXPECT(job->early.load() == 0);
  HM_EXPECT(job->overtook.load() >= 1);  // a barrier would have held group 1 for group 0's 20 ms
  // A failing dependency still completes the job's counters (item_done runs for skipped items).
  auto failing = std::make_shared<DataflowJob>();
  failing->throw_at = 1;
  auto h = pool.submit(failing);
  HM_EXPECT_THROWS(h.wait(), std::runtime_error);
}

HM_TEST(thread_pool_trace_records_every_item_in_order) {
  hm::cpu::ThreadPool pool(3, false);
  hm::cpu::set_pool_tracing(true);
  auto job = std::make_shared<PhasedJob>(std::vector<int64_t>{7, 5});
  const int64_t before = hm::cpu::monotonic_ns();
  pool.run(job);
  hm::cpu::set_pool_tracing(false);
  const hm::cpu::PoolTrace t = hm::cpu::last_pool_trace();
  HM_EXPECT(t.items.size() == 12 && t.workers == 3);
  HM_EXPECT(t.phase_items.size() == 2 && t.phase_items[0] == 7 && t.phase_items[1] == 5);
  HM_EXPECT(t.submit_ns >= before && t.finish_ns >= t.submit_ns);
  int64_t last_phase0_end = 0;
  for (std::size_t i = 0; i < t.items.size(); ++i) {
    const auto& it = t.items[i];
    HM_EXPECT(it.phase == (i < 7 ? 0 : 1) && it.item == (i < 7 ? int64_t(i) : int64_t(i) - 7));
    HM_EXPECT(it.worker >= 0 && it.worker < 3);
    HM_EXPECT(it.take_ns >= t.submit_ns && it.ready_ns >= it.take_ns && it.end_ns >= it.ready_ns);
    HM_EXPECT(it.end_ns <= t.finish_ns);
    if (it.phase == 0) last_phase0_end = std::max(last_phase0_end, it.end_ns);
    if (it.phase == 1) HM_EXPECT(it.ready_ns >= last_phase0_end);  // the barrier, as recorded
  }
  // Off again: the next job leaves the last record alone.
  pool.run(std::make_shared<PhasedJob>(std::vector<int64_t>{2, 2}));
  HM_EXPECT(hm::cpu::last_pool_trace().items.size() == 12);
}

namespace {

// Records which thread prepared each item and checks, as each item runs, that a prepared item
// runs on the thread that prepared it and only after its preparation.
struct LookaheadJob final : hm::cpu::Job {
  static constexpr int64_t kItems = 240;
  std::vector<std::atomic<int>> prepared = std::vector<std::atomic<int>>(kItems * 2);
  std::vector<std::atomic<int>> ran = std::vector<std::atomic<int>>(kItems * 2);
  std::vector<std::thread::id> preparer = std::vector<std::thread::id>(kItems * 2);
  std::atomic<int> wrong_thread{0}, prepared_after_run{0}, n_prepared{0};
  int phases() const override { return 2; }
  int64_t items(int) const override { return kItems; }
  // Phase 1 item i waits for phase 0 item i only (dataflow), so held-ahead tickets meet
  // dependencies that other threads hold.
  bool barrier(int p) const override { return p != 1; }
  bool ready(int p, int64_t i) const override { return p != 1 || ran[i].load() == 1; }
  void prepare(int p, int64_t i) noexcept override {
    const int64_t k = p * kItems + i;
    if (ran[k].load() != 0) prepared_after_run++;
    preparer[k] = std::this_thread::get_id();
    prepared[k]++;
    n_prepared++;
  }
  void run(int p, int64_t i) override {
    const int64_t k = p * kItems + i;
    if (prepared[k].load() > 0 && preparer[k] != std::this_thread::get_id()) wrong_thread++;
    if (i % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(30));
    ran[k]++;
  }
};

}  // namespace

HM_TEST(thread_pool_lookahead_prepares_the_next_item_on_its_own_thread) {
  for (const char* setting : {"1", "0"}) {
    setenv("HYBRID_MOE_LOOKAHEAD", setting, 1);
    hm::cpu::ThreadPool pool(4, false);
    unsetenv("HYBRID_MOE_LOOKAHEAD");
    for (int rep = 0; rep < 10; ++rep) {
      auto job = std::make_shared<LookaheadJob>();
      auto h = pool.submit(job);
      h.help();
      h.wait();
      for (int64_t k = 0; k < 2 * LookaheadJob::kItems; ++k) {
        HM_EXPECT(job->ran[k].load() == 1);
        HM_EXPECT(job->prepared[k].load() <= 1);
      }
      HM_EXPECT(job->wrong_thread.load() == 0 && job->prepared_after_run.load() == 0);
      // On: a thread takes its next ticket ahead while more than 2 * (workers + 1) are left
      // (all but the first ticket of each thread and the tail, here ~470 of 480); off: never.
      if (setting[0] == '1')
        HM_EXPECT(job->n_prepared.load() >= LookaheadJob::kItems);
      else
        HM_EXPECT(job->n_prepared.load() == 0);
    }
  }
  setenv("HYBRID_MOE_LOOKAHEAD", "2", 1);
  HM_EXPECT_THROWS(hm::cpu::ThreadPool(2, false), hm::ValueError);
  unsetenv("HYBRID_MOE_LOOKAHEAD");
}

HM_TEST(thread_pool_jobs_in_flight_from_many_submitters_all_complete) {
  // Slots and queue together: bursts of non-blocking submits from 3 threads, joined later.
  hm::cpu::ThreadPool pool(5, false);
  std::atomic<int> bad{0};
  std::vector<std::thread> submitters;
  for (int s = 0; s < 3; ++s)
    submitters.emplace_back([&pool, &bad, s] {
      for (int burst = 0; burst < 40; ++burst) {
        std::vector<std::shared_ptr<PhasedJob>> jobs;
        std::vector<hm::cpu::JobHandle> handles;
        for (int j = 0; j < 1 + (burst + s) % 5; ++j) {
          jobs.push_back(std::make_shared<PhasedJob>(std::vector<int64_t>{1 + j, 30 + s}));
          handles.push_back(pool.submit(jobs.back()));
        }
        for (auto& h : handles) h.wait();
        for (auto& job : jobs) {
          for (auto& h : job->hits)
            if (h.load() != 1) bad++;
          if (job->phase1_started_early.load() != 0) bad++;
        }
      }
    });
  for (auto& t : submitters) t.join();
  HM_EXPECT(bad.load() == 0);
}
