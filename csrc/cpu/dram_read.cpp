#include "cpu/dram_read.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/check.h"

namespace hm::cpu {
namespace {

struct FreeDeleter {
  void operator()(uint64_t* p) const { std::free(p); }
};

// Variant 1: one linear stream, 8 independent accumulators (the hardware prefetcher alone).
uint64_t read_linear(const uint64_t* p, std::size_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += p[i];
    a1 += p[i + 1];
    a2 += p[i + 2];
    a3 += p[i + 3];
    a4 += p[i + 4];
    a5 += p[i + 5];
    a6 += p[i + 6];
    a7 += p[i + 7];
  }
  for (; i < n; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

// Variant 2: the expert kernels' access pattern: kStreams interleaved streams (the range cut in
// kStreams parts, one 64-byte line of each per step) with software prefetch kAhead bytes ahead
// in every stream. On the lent Xeon variant 1 read 80-88 GB/s while the kernels streamed 110-128.
constexpr int kStreams = 4;
constexpr std::size_t kAhead = 2048;
uint64_t read_streams(const uint64_t* p, std::size_t n) {
  constexpr std::size_t kLine = 8;  // words per 64-byte line
  const std::size_t part = n / kStreams / kLine * kLine;
  uint64_t acc[kStreams][kLine] = {};
  for (std::size_t i = 0; i < part; i += kLine)
    for (int s = 0; s < kStreams; ++s) {
      const uint64_t* q = p + s * part + i;
      __builtin_prefetch(reinterpret_cast<const char*>(q) + kAhead, 0, 3);
      for (std::size_t w = 0; w < kLine; ++w) acc[s][w] += q[w];
    }
  uint64_t sum = read_linear(p + kStreams * part, n - kStreams * part);  // the remainder
  for (auto& a : acc)
    for (uint64_t v : a) sum += v;
  return sum;
}

}  // namespace

double measure_dram_read_gbps(ThreadPool& pool, std::size_t bytes, int reps) {
  HM_CHECK(bytes >= (std::size_t(64) << 20), "bytes must be >= 64 MiB (far larger than caches), got ",
           bytes);
  HM_CHECK(reps >= 1, "reps must be >= 1, got ", reps);
  constexpr std::size_t kAlign = 2 << 20;  // 2 MiB: lets the OS use huge pages
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  std::unique_ptr<uint64_t, FreeDeleter> buf(
      static_cast<uint64_t*>(std::aligned_alloc(kAlign, bytes)));
  HM_CHECK_RT(buf != nullptr, "out of memory allocating ", bytes, " bytes for the DRAM reader");
  const std::size_t words = bytes / sizeof(uint64_t);
  // One chunk per worker, each a multiple of 8 words.
  const int64_t chunks = pool.size();
  const std::size_t per = (words / chunks) / 8 * 8;
  auto range = [&](int64_t c) {
    const std::size_t b = static_cast<std::size_t>(c) * per;
    return std::make_pair(b, c + 1 == chunks ? words : b + per);
  };
  pool.parallel_for(chunks, [&](int64_t c) {  // first touch by the readers
    const auto [b, e] = range(c);
    for (std::size_t i = b; i < e; ++i) buf.get()[i] = i;
  });
  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  for (auto* reader : {&read_linear, &read_streams}) {
    auto read_all = [&] {
      pool.parallel_for(chunks, [&](int64_t c) {
        const auto [b, e] = range(c);
        sink.fetch_add(reader(buf.get() + b, e - b), std::memory_order_relaxed);
      });
    };
    read_all();  // warm: page tables, worker wake-up
    std::vector<double> secs;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      read_all();
      secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(secs.begin(), secs.end());
    best = std::max(best, static_cast<double>(bytes) / secs[secs.size() / 2] / 1e9);
  }
  // The sum depends on every word, so the reads cannot be optimised away.
  HM_CHECK_RT(sink.load() != 0, "DRAM reader produced no data");
  return best;
}

}  // namespace hm::cpu
