// [NOTE] Weight streaming rate of the T = 1 kernels with N pinned threads, against the DRAM
// reader's loop on the same buffers, threads and process (issue 4: a Q8_0 layer streams at ~0.7 of
// the reader; is the per-core kernel or the layer's structure short?).
//
// Kernels: reader (dram::read_avx512_linear, the reader's best loop), q8g (dot_groups_q8 at T = 1,
// Qwen3-30B-A3B gate/up groups: n_in 2048), bf16 (dot_rows at T = 1, rows of 2048). Regimes:
//   steady: each thread walks its own slab (buffer / N) in calls of one projection (768 rows),
//           3 passes; GB/s = bytes / (common start -> last thread done), median over passes;
//   burst:  a decode layer's bytes (8 experts: q8 40 MB, bf16 75 MB) split evenly over the threads,
//           each reading its share in item-sized calls (139 KB q8 and reader, 256 KB bf16) from a
//           fresh offset; GB/s from the median over --bursts bursts (common start -> last done).
// Configs: each runs in its own forked child (kernel settings are read once per process), with
// the environment it names; rounds rotate the order of the configs (the first slot of a round was
// slow in earlier A/Bs). Every child measures the reader too, so q8g / reader is a same-process
// ratio. Output: one line per (round, config, with the buffers' share on huge pages) and a median
// table; --json writes the table.
// Usage: bench_stream_threads [--threads 16] [--rounds 4] [--bursts 41] [--buffer-mib 2048]
//        [--configs "base;pf0:HYBRID_MOE_PREFETCH=0;pf4k:HYBRID_MOE_PREFETCH=4096"]
//        [--json out.json]
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench_cli.h"
#include "core/q8_rows16.h"
#include "core/weight_format.h"
#include "cpu/dram_read_kernels.h"
#include "cpu/isa.h"
#include "cpu/kernel_ops.h"
#include "cpu/stream_buffer.h"
#include "run_in_child.h"

namespace {

using hm::WeightFormat;
using Clock = std::chrono::steady_clock;

constexpr int64_t kNIn = 2048;
constexpr int64_t kCallRows = 768;  // steady: one gate projection per call
constexpr int kKernels = 3;         // reader, q8g, bf16
constexpr double kLayerBytes[kKernels] = {40.1e6, 40.1e6, 75.5e6};  // 8 experts, T = 1
constexpr int64_t kItemBytes[kKernels] = {139264, 139264, 262144};  // phase-1 item sizes

struct Rates {
  double steady[kKernels] = {0, 0, 0}, burst[kKernels] = {0, 0, 0};  // GB/s, all threads
  double huge_share = 0;  // of both buffers on transparent huge pages (/proc/self/smaps)
};

void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu % std::max(1, static_cast<int>(std::thread::hardware_concurrency())), &s);
  pthread_setaffinity_np(pthread_self(), sizeof(s), &s);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Spin barrier for n threads (generation counter).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void arrive() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_acq_rel);
    } else {
      while (gen_.load(std::memory_order_acquire) == gen) {
      }
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0}, gen_{0};
};

// Random weights in place: q8 groups with fp16 scales near 2^-7 (no denormals), bf16 near 0.01.
void fill(uint8_t* p, std::size_t bytes, int kernel, uint64_t seed) {
  uint64_t z = 0x9E3779B97F4A7C15ull * (seed + 1);
  for (std::size_t i = 0; i + 8 <= bytes; i += 8) {
    z ^= z << 13;
    z ^= z >> 7;
    z ^= z << 17;
    std::memcpy(p + i, &z, 8);
  }
  if (kernel == 2)
    for (std::size_t i = 1; i < bytes; i += 2) p[i] = 0x3c + (p[i] & 1);
  if (kernel == 1) {
    const std::size_t gb = hm::kQ8GroupRows * hm::row_bytes(WeightFormat::kQ8_0, kNIn);
    const std::size_t scale_bytes = kNIn / hm::kQ8BlockSize * 2 * hm::kQ8GroupRows;
    for (std::size_t g = 0; g + gb <= bytes; g += gb)
      for (std::size_t i = 1; i < scale_bytes; i += 2) p[g + i] = 0x20 + (p[g + i] & 3);
  }
}

struct Worker {
  std::vector<uint8_t> packed_q8, packed_bf16;
  std::vector<float> y;
  uint64_t sink = 0;
};

// One call of `bytes` at p with kernel k (bytes: whole groups / rows).
void call(const hm::cpu::KernelOps& ops, int k, const uint8_t* p, std::size_t bytes, Worker& w) {
  if (k == 0) {
    w.sink += hm::cpu::dram::read_avx512_linear(reinterpret_cast<const uint64_t*>(p), bytes / 8);
  } else if (k == 1) {
    const std::size_t gb = hm::kQ8GroupRows * hm::row_bytes(WeightFormat::kQ8_0, kNIn);
    ops.dot_groups_q8(p, static_cast<int64_t>(bytes / gb), kNIn, w.packed_q8.data(), 1, w.y.data(),
                      1);
  } else {
    const std::size_t rb = hm::row_bytes(WeightFormat::kBF16, kNIn);
    ops.dot_rows(WeightFormat::kBF16, p, rb, static_cast<int64_t>(bytes / rb), kNIn,
                 w.packed_bf16.data(), 1, w.y.data(), 1);
  }
}

// Bytes of one unit of kernel k (calls are multiples of it).
std::size_t unit_bytes(int k) {
  if (k == 2) return hm::row_bytes(WeightFormat::kBF16, kNIn);
  return hm::kQ8GroupRows * hm::row_bytes(WeightFormat::kQ8_0, kNIn);  // reader: q8's calls
}

Rates measure(int threads, int bursts, std::size_t buffer_bytes) {
  const auto& ops = hm::cpu::kernel_ops(hm::cpu::Isa::kAvx512);
  // Buffers: q8 (the reader walks it too) and bf16, first touched by the threads that read them.
  hm::cpu::StreamBuffer buf_q8 = hm::cpu::alloc_stream_buffer(buffer_bytes);
  hm::cpu::StreamBuffer buf_bf16 = hm::cpu::alloc_stream_buffer(buffer_bytes);
  const std::size_t slab = buffer_bytes / threads / (2 << 20) * (2 << 20);
  Barrier bar(threads);
  std::vector<Worker> ws(threads);
  std::vector<double> t_end(threads);
  std::vector<std::vector<double>> steady(kKernels), burst(kKernels);
  Clock::time_point t_start;
  auto body = [&](int i) {
    pin(i);
    Worker& w = ws[i];
    fill(buf_q8.get() + i * slab, slab, 1, 2 * i);
    fill(buf_bf16.get() + i * slab, slab, 2, 2 * i + 1);
    std::vector<float> x(kNIn);
    for (int64_t j = 0; j < kNIn; ++j) x[j] = std::sin(0.37f * j + i);
    const float* src = x.data();
    w.packed_q8.resize(ops.packed_bytes(WeightFormat::kQ8_0, 1, kNIn) + 64);
    w.packed_bf16.resize(ops.packed_bytes(WeightFormat::kBF16, 1, kNIn) + 64);
    ops.pack(WeightFormat::kQ8_0, 1, kNIn, 0, kNIn, &src, w.packed_q8.data());
    ops.pack(WeightFormat::kBF16, 1, kNIn, 0, kNIn, &src, w.packed_bf16.data());
    w.y.resize(kCallRows);
    auto timed = [&](const std::function<void()>& work) {  // common start, last end
      bar.arrive();
      if (i == 0) t_start = Clock::now();
      bar.arrive();
      work();
      t_end[i] = std::chrono::duration<double>(Clock::now() - t_start).count();
      bar.arrive();
      return *std::max_element(t_end.begin(), t_end.end());
    };
    for (int k = 0; k < kKernels; ++k) {
      const uint8_t* base = (k == 2 ? buf_bf16.get() : buf_q8.get()) + i * slab;
      const std::size_t u = unit_bytes(k);
      const std::size_t call_bytes = k == 2 ? kCallRows * u : kCallRows / hm::kQ8GroupRows * u;
      const std::size_t calls = slab / call_bytes;
      for (int pass = 0; pass < 4; ++pass) {  // pass 0 warms (page tables, clocks)
        const double s = timed([&] {
          for (std::size_t c = 0; c < calls; ++c)
            call(ops, k, base + c * call_bytes, call_bytes, w);
        });
        if (pass > 0 && i == 0) steady[k].push_back(threads * calls * call_bytes / s / 1e9);
      }
      // Bursts: this thread's share of a layer, item-sized calls, fresh offsets in its slab.
      const std::size_t item = kItemBytes[k] / u * u;
      const std::size_t share = static_cast<std::size_t>(kLayerBytes[k] / threads) / item * item;
      std::size_t off = 0;
      for (int b = 0; b < bursts; ++b) {
        if (off + share > slab) off = 0;
        const double s = timed([&] {
          for (std::size_t o = 0; o < share; o += item) call(ops, k, base + off + o, item, w);
        });
        off += share;
        if (i == 0) burst[k].push_back(threads * share / s / 1e9);
      }
    }
  };
  std::vector<std::thread> th;
  for (int i = 0; i < threads; ++i) th.emplace_back(body, i);
  for (auto& t : th) t.join();
  Rates r;
  const hm::cpu::PageRanges ranges{{buf_q8.get(), buffer_bytes}, {buf_bf16.get(), buffer_bytes}};
  r.huge_share = static_cast<double>(hm::cpu::huge_page_bytes(ranges)) / (2.0 * buffer_bytes);
  for (int k = 0; k < kKernels; ++k) {
    r.steady[k] = median(steady[k]);
    r.burst[k] = median(burst[k]);
  }
  return r;
}

struct Config {
  std::string name;
  std::vector<std::pair<std::string, std::string>> env;
};

// "name:K=V,K=V;name2;..." -> configs.
std::vector<Config> parse_configs(const std::string& s) {
  std::vector<Config> out;
  std::size_t a = 0;
  while (a < s.size()) {
    std::size_t b = s.find(';', a);
    if (b == std::string::npos) b = s.size();
    const std::string item = s.substr(a, b - a);
    Config c;
    const std::size_t colon = item.find(':');
    c.name = item.substr(0, colon);
    if (colon != std::string::npos) {
      std::size_t p = colon + 1;
      while (p < item.size()) {
        std::size_t q = item.find(',', p);
        if (q == std::string::npos) q = item.size();
        const std::string kv = item.substr(p, q - p);
        const std::size_t eq = kv.find('=');
        if (eq != std::string::npos) c.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
        p = q + 1;
      }
    }
    if (!c.name.empty()) out.push_back(c);
    a = b + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string configs = "base", json;
  int threads = 16, rounds = 4, bursts = 41;
  int64_t buffer_mib = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--configs")
      configs = v;
    else if (a == "--threads")
      threads = static_cast<int>(flag_int(a, v, 1, 1024));
    else if (a == "--rounds")
      rounds = static_cast<int>(flag_int(a, v, 1, 1000));
    else if (a == "--bursts")
      bursts = static_cast<int>(flag_int(a, v, 1, 100000));
    else if (a == "--buffer-mib")
      buffer_mib = flag_int(a, v, 1, 1 << 20);
    else if (a == "--json")
      json = v;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (!hm::cpu::avx512_usable()) {
    std::fprintf(stderr, "this machine cannot run the avx512 variant\n");
    return 1;
  }
  if (threads < 1 || rounds < 1 || bursts < 1 || buffer_mib < 64 * threads) {
    std::fprintf(stderr, "need threads, rounds, bursts >= 1 and buffer-mib >= 64 x threads\n");
    return 2;
  }
  const auto cs = parse_configs(configs);
  std::vector<std::vector<Rates>> res(cs.size());
  for (int r = 0; r < rounds; ++r)
    for (std::size_t j = 0; j < cs.size(); ++j) {
      const std::size_t v = (j + r) % cs.size();  // rotate: every config takes every slot
      Rates g;
      const bool ok = run_in_child(
          [&] {
            for (const auto& [k, val] : cs[v].env) setenv(k.c_str(), val.c_str(), 1);
            return measure(threads, bursts, static_cast<std::size_t>(buffer_mib) << 20);
          },
          &g);
      if (!ok) {
        std::fprintf(stderr, "config %s failed\n", cs[v].name.c_str());
        return 1;
      }
      res[v].push_back(g);
      std::printf(
          "round %d slot %zu %-10s steady reader %6.1f q8g %6.1f bf16 %6.1f | burst reader "
          "%6.1f q8g %6.1f bf16 %6.1f GB/s | huge pages %3.0f%%\n",
          r, j, cs[v].name.c_str(), g.steady[0], g.steady[1], g.steady[2], g.burst[0], g.burst[1],
          g.burst[2], 100 * g.huge_share);
      std::fflush(stdout);
    }
  // Medians over rounds; ratios to the reader per child, then the median.
  std::printf("\n%d threads, median of %d rounds, GB/s (x reader in the same child)\n", threads,
              rounds);
  std::printf("%-10s %-6s %8s %15s %15s\n", "config", "regime", "reader", "q8g", "bf16");
  std::string js = "{\"threads\": " + std::to_string(threads) +
                   ", \"rounds\": " + std::to_string(rounds) + ", \"results\": [";
  for (std::size_t v = 0; v < cs.size(); ++v)
    for (int m = 0; m < 2; ++m) {
      auto field = [&](const Rates& g, int k) { return m == 0 ? g.steady[k] : g.burst[k]; };
      double med[kKernels], ratio[kKernels];
      for (int k = 0; k < kKernels; ++k) {
        std::vector<double> a, q;
        for (const auto& g : res[v]) {
          a.push_back(field(g, k));
          q.push_back(field(g, k) / field(g, 0));
        }
        med[k] = median(a);
        ratio[k] = median(q);
      }
      const char* regime = m == 0 ? "steady" : "burst";
      std::printf("%-10s %-6s %8.1f %7.1f (%.3f) %7.1f (%.3f)\n", cs[v].name.c_str(), regime,
                  med[0], med[1], ratio[1], med[2], ratio[2]);
      char buf[400];
      std::snprintf(buf, sizeof(buf),
                    "%s{\"config\": \"%s\", \"regime\": \"%s\", \"reader_gbps\": %.2f, "
                    "\"q8g_gbps\": %.2f, \"q8g_x_reader\": %.4f, \"bf16_gbps\": %.2f, "
                    "\"bf16_x_reader\": %.4f}",
                    (v || m) ? ", " : "", cs[v].name.c_str(), regime, med[0], med[1], ratio[1],
                    med[2], ratio[2]);
      js += buf;
    }
  js += "]}\n";
  return write_text_file(json, js) ? 0 : 1;
}
