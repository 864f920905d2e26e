#include "cpu/burst_read.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/check.h"
#include "cpu/dram_read.h"
#include "cpu/stream_buffer.h"

namespace hm::cpu {
namespace {

// One burst: items of [begin, end) words, each read with `fn`.
class BurstJob final : public Job {
 public:
  BurstJob(const uint64_t* data, std::size_t begin, std::size_t end, std::size_t item_words,
           dram::ReadFn fn, std::atomic<uint64_t>* sink)
      : data_(data), begin_(begin), end_(end), item_words_(item_words), fn_(fn), sink_(sink) {}
  int phases() const override { return 1; }
  int64_t items(int) const override {
    return static_cast<int64_t>((end_ - begin_ + item_words_ - 1) / item_words_);
  }
  void run(int, int64_t item) override {
    const std::size_t b = begin_ + static_cast<std::size_t>(item) * item_words_;
    const std::size_t e = std::min(end_, b + item_words_);
    sink_->fetch_add(fn_(data_ + b, e - b), std::memory_order_relaxed);
  }

 private:
  const uint64_t* data_;
  std::size_t begin_, end_, item_words_;
  dram::ReadFn fn_;
  std::atomic<uint64_t>* sink_;
};

}  // namespace

BurstRead measure_burst_read(const CallerPool& cp, std::size_t burst_bytes, std::size_t item_bytes,
                             int bursts, std::size_t buffer_bytes) {
  HM_CHECK(burst_bytes >= (std::size_t(64) << 10), "burst_bytes must be >= 64 KiB, got ",
           burst_bytes);
  HM_CHECK(item_bytes >= 4096 && item_bytes % 64 == 0 && item_bytes <= burst_bytes,
           "item_bytes must be a multiple of 64 in [4096, burst_bytes], got ", item_bytes);
  HM_CHECK(bursts >= 1, "bursts must be >= 1, got ", bursts);
  HM_CHECK(buffer_bytes >= std::max<std::size_t>(std::size_t(256) << 20, 8 * burst_bytes),
           "buffer_bytes must be >= max(256 MiB, 8 x burst_bytes), got ", buffer_bytes);
  const StreamBuffer buf = alloc_stream_buffer(buffer_bytes);
  auto* data = reinterpret_cast<uint64_t*>(buf.get());
  const std::size_t words = buffer_bytes / 8, burst_words = (burst_bytes + 7) / 8;
  const std::size_t item_words = item_bytes / 8;
  std::atomic<uint64_t> sink{0};
  ThreadPool& pool = *cp.pool;
  pool.parallel_for(pool.size(), [&](int64_t s) {  // first touch by the workers
    const std::size_t per = words / pool.size();
    const std::size_t b = s * per, e = s + 1 == pool.size() ? words : b + per;
    for (std::size_t i = b; i < e; ++i) data[i] = i;
  });
  const dram::ReadFn fn = widest_linear_read();
  std::size_t off = 0;
  auto one_burst = [&] {
    if (off + burst_words > words) off = 0;
    auto job = std::make_shared<BurstJob>(data, off, off + burst_words, item_words, fn, &sink);
    off += burst_words;
    const auto t0 = std::chrono::steady_clock::now();
    JobHandle h = pool.submit(job);
    if (cp.caller_helps) h.help();
    h.wait();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  };
  for (std::size_t warm = 0; warm < words; warm += burst_words) one_burst();  // one pass
  std::vector<double> us;
  for (int i = 0; i < bursts; ++i) us.push_back(one_burst());
  HM_CHECK_RT(sink.load() != 0, "burst reader produced no data");
  std::sort(us.begin(), us.end());
  BurstRead r;
  r.median_us = us[us.size() / 2];
  r.p10_us = us[us.size() / 10];
  r.p90_us = us[us.size() * 9 / 10];
  r.gbps = static_cast<double>(burst_bytes) / (r.median_us * 1e3);
  r.items = static_cast<int>((burst_words + item_words - 1) / item_words);
  return r;
}

}  // namespace hm::cpu
