#include "cpu/pool_trace.h"

#include <atomic>
#include <ctime>
#include <mutex>
#include <utility>

namespace hm::cpu {
namespace {

std::atomic<bool> g_tracing{false};
std::mutex g_last_m;
PoolTrace& last() {
  static auto* t = new PoolTrace();  // never destroyed: a worker may finish a job at exit
  return *t;
}

}  // namespace

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void set_pool_tracing(bool on) {
  g_tracing.store(on, std::memory_order_relaxed);
}

bool pool_tracing() {
  return g_tracing.load(std::memory_order_relaxed);
}

PoolTrace last_pool_trace() {
  std::lock_guard<std::mutex> lk(g_last_m);
  return last();
}

void keep_pool_trace(PoolTrace trace) {
  std::lock_guard<std::mutex> lk(g_last_m);
  last() = std::move(trace);
}

}  // namespace hm::cpu
