#include "cpu/dram_read.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "core/check.h"
#include "cpu/dram_read_kernels.h"
#include "cpu/isa.h"
#include "cpu/stream_buffer.h"

namespace hm::cpu {
namespace dram {

uint64_t read_scalar_linear(const uint64_t* p, std::size_t n) {
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

uint64_t read_scalar_streams(const uint64_t* p, std::size_t n) {
  constexpr int kStreams = 4;
  constexpr std::size_t kLine = 8;  // words per 64-byte line
  constexpr std::size_t kAhead = 2048;
  const std::size_t part = n / kStreams / kLine * kLine;
  uint64_t acc[kStreams][kLine] = {};
  for (std::size_t i = 0; i < part; i += kLine)
    for (int s = 0; s < kStreams; ++s) {
      const uint64_t* q = p + s * part + i;
      __builtin_prefetch(reinterpret_cast<const char*>(q) + kAhead, 0, 3);
      for (std::size_t w = 0; w < kLine; ++w) acc[s][w] += q[w];
    }
  uint64_t sum = read_scalar_linear(p + kStreams * part, n - kStreams * part);  // the remainder
  for (auto& a : acc)
    for (uint64_t v : a) sum += v;
  return sum;
}

}  // namespace dram

namespace {

struct Method {
  const char* name;
  dram::ReadFn fn;
  bool chunked;  // 4 MiB chunks handed out dynamically, else one contiguous slab per worker
};

std::vector<Method> methods() {
  std::vector<Method> m{{"scalar-linear", dram::read_scalar_linear, false},
                        {"scalar-streams", dram::read_scalar_streams, false}};
#if HYBRID_MOE_HAVE_AVX512
  if (avx512_usable()) {
    m.push_back({"avx512-linear", dram::read_avx512_linear, false});
    m.push_back({"avx512-linear-pf", dram::read_avx512_linear_pf, false});
    m.push_back({"avx512-streams", dram::read_avx512_streams, false});
    m.push_back({"avx512-chunks", dram::read_avx512_linear, true});
    return m;
  }
#endif
#if HYBRID_MOE_HAVE_AVX2
  if (avx2_usable()) {
    m.push_back({"avx2-linear", dram::read_avx2_linear, false});
    m.push_back({"avx2-chunks", dram::read_avx2_linear, true});
    return m;
  }
#endif
  m.push_back({"scalar-chunks", dram::read_scalar_linear, true});
  return m;
}

// One warm-up pass, then reps timed passes of read_all over `bytes`: the method's GB/s (median
// pass) goes into res, and res.best when it is the fastest so far.
void time_method(const char* name, std::size_t bytes, int reps,
                 const std::function<void()>& read_all, DramRead& res) {
  read_all();  // warm: page tables, worker wake-up
  std::vector<double> secs;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    read_all();
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  const double gbps = static_cast<double>(bytes) / secs[secs.size() / 2] / 1e9;
  res.methods.push_back({name, gbps});
  if (gbps > res.best_gbps) {
    res.best_gbps = gbps;
    res.best = name;
  }
}

bool log_enabled() {
  const char* v = std::getenv("HYBRID_MOE_DRAM_READ_LOG");
  return v && std::strcmp(v, "0") != 0 && v[0] != '\0';
}

}  // namespace

DramRead measure_dram_read(ThreadPool& pool, std::size_t bytes, int reps) {
  HM_CHECK(bytes >= (std::size_t(64) << 20),
           "bytes must be >= 64 MiB (far larger than caches), got ", bytes);
  HM_CHECK(reps >= 1, "reps must be >= 1, got ", reps);
  bytes = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  // Huge-page advised like the expert stores (cpu/stream_buffer.h).
  const StreamBuffer buf = alloc_stream_buffer(bytes);
  uint64_t* data = reinterpret_cast<uint64_t*>(buf.get());
  const std::size_t words = bytes / sizeof(uint64_t);
  // Slabs: one per worker, each a multiple of 8 words. Chunks: 4 MiB each.
  const int64_t slabs = pool.size();
  const std::size_t per = (words / slabs) / 8 * 8;
  constexpr std::size_t kChunkWords = (std::size_t(4) << 20) / sizeof(uint64_t);
  const int64_t chunks = static_cast<int64_t>((words + kChunkWords - 1) / kChunkWords);
  auto slab = [&](int64_t c) {
    const std::size_t b = static_cast<std::size_t>(c) * per;
    return std::make_pair(b, c + 1 == slabs ? words : b + per);
  };
  auto chunk = [&](int64_t c) {
    const std::size_t b = static_cast<std::size_t>(c) * kChunkWords;
    return std::make_pair(b, std::min(words, b + kChunkWords));
  };
  pool.parallel_for(slabs, [&](int64_t c) {  // first touch by the readers
    const auto [b, e] = slab(c);
    for (std::size_t i = b; i < e; ++i) data[i] = i;
  });
  std::atomic<uint64_t> sink{0};
  DramRead res;
  for (const Method& m : methods()) {
    auto read_all = [&] {
      pool.parallel_for(m.chunked ? chunks : slabs, [&](int64_t c) {
        const auto [b, e] = m.chunked ? chunk(c) : slab(c);
        sink.fetch_add(m.fn(data + b, e - b), std::memory_order_relaxed);
      });
    };
    time_method(m.name, bytes, reps, read_all, res);
  }
  // The sums depend on every word, so the reads cannot be optimised away.
  HM_CHECK_RT(sink.load() != 0, "DRAM reader produced no data");
  if (log_enabled()) {
    for (const auto& m : res.methods)
      std::fprintf(stderr, "dram_read %-17s %7.1f GB/s (%d threads, %zu MiB, median of %d)\n",
                   m.name.c_str(), m.gbps, pool.size(), bytes >> 20, reps);
    std::fprintf(stderr, "dram_read best: %s %.1f GB/s\n", res.best.c_str(), res.best_gbps);
  }
  return res;
}

DramRead measure_dram_read_ranges(ThreadPool& pool, const PageRanges& ranges, int reps) {
  HM_CHECK(reps >= 1, "reps must be >= 1, got ", reps);
  constexpr std::size_t kChunkBytes = std::size_t(4) << 20;
  struct Chunk {
    const uint64_t* p;
    std::size_t words;
  };
  std::vector<Chunk> chunks;
  std::size_t bytes = 0;
  for (const auto& [start, len] : ranges) {
    HM_CHECK(start != nullptr || len == 0, "a range starts at a null pointer");
    const auto a = (reinterpret_cast<uintptr_t>(start) + 63) / 64 * 64;
    const auto e = (reinterpret_cast<uintptr_t>(start) + len) / 64 * 64;
    for (uintptr_t c = a; c < e; c += kChunkBytes) {
      const std::size_t n = std::min<uintptr_t>(kChunkBytes, e - c);
      chunks.push_back({reinterpret_cast<const uint64_t*>(c), n / 8});
      bytes += n;
    }
  }
  HM_CHECK(bytes >= (std::size_t(64) << 20),
           "the ranges must hold >= 64 MiB (far larger than caches), got ", bytes, " bytes");
  std::atomic<uint64_t> sink{0};
  std::vector<dram::ReadFn> seen;
  DramRead res;
  for (const Method& m : methods()) {
    if (std::find(seen.begin(), seen.end(), m.fn) != seen.end()) continue;  // chunked twins
    seen.push_back(m.fn);
    auto read_all = [&] {
      pool.parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
        sink.fetch_add(m.fn(chunks[c].p, chunks[c].words), std::memory_order_relaxed);
      });
    };
    time_method(m.name, bytes, reps, read_all, res);
  }
  return res;  // (the sink's atomic adds keep the reads; caller memory may hold zeros)
}

dram::ReadFn widest_linear_read() {
  return methods().back().fn;  // methods() ends with the widest ISA's chunked method
}

double measure_dram_read_gbps(ThreadPool& pool, std::size_t bytes, int reps) {
  return measure_dram_read(pool, bytes, reps).best_gbps;
}

}  // namespace hm::cpu
