// [NOTE] Per-thread weight streaming rate of the AVX512 (or, --isa avx2, AVX2) dot_rows kernel,
// Q8_0 against bf16.
//
// What it measures: weight bytes per second and thread of KernelOps::dot_rows at one token (the
// decode case, T = 1), rows of n_in = 2048 values (Qwen3-30B-A3B gate/up rows), in three regimes:
//   l2:     the same rows (--l2-kib of weights) dotted again and again: compute bound, so the rate
//           measures the kernel's instruction cost per byte;
//   dram1:  one thread walks --dram-mib of weights in calls of 768 rows (one gate projection);
//   dram2:  two pinned threads walk their own halves at once (rate per thread).
// Each Q8_0 kernel variant (HYBRID_MOE_Q8_KERNEL, see kernel_ops.h) runs in its own forked child
// (the variant is read once per process), rounds alternate the variants, every number is the
// median over rounds; ratios are against the first variant listed (the named baseline) and
// q8_0 / bf16 within the same child. Output: a table on stdout and, with --json, a JSON file.
// Usage: bench_q8_rows [--isa avx512|avx2] [--variants pair,quad] [--rounds 7] [--l2-kib 512]
//                      [--dram-mib 1024] [--json out.json]
// (the variants are the AVX512 Q8_0 codes; with --isa avx2 name one, e.g. --variants pair;
// "groups" runs the Q8_0 rows repacked in groups of 16, core/q8_rows16.h, through dot_groups_q8)
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_cli.h"
#include "core/q8_rows16.h"
#include "core/weight_format.h"
#include "cpu/isa.h"
#include "cpu/kernel_ops.h"
#include "run_in_child.h"

namespace {

using hm::WeightFormat;
using Clock = std::chrono::steady_clock;

constexpr int64_t kNIn = 2048;      // values per row
constexpr int64_t kCallRows = 768;  // rows per dot_rows call in the DRAM regimes

struct Regimes {
  double l2 = 0, dram1 = 0, dram2 = 0;  // GB/s per thread
};

void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu % std::max(1, static_cast<int>(std::thread::hardware_concurrency())), &s);
  pthread_setaffinity_np(pthread_self(), sizeof(s), &s);
}

// Random weights of `rows` rows in format f (Q8_0: random fp16 scales in [0.5, 1.5) * 2^-7).
std::vector<uint8_t> make_rows(WeightFormat f, int64_t rows, uint32_t seed) {
  const std::size_t rb = hm::row_bytes(f, kNIn);
  std::vector<uint8_t> w(rb * rows);
  uint64_t z = 0x9E3779B97F4A7C15ull * (seed + 1);  // xorshift64: fast enough for a GiB
  for (std::size_t i = 0; i + 8 <= w.size(); i += 8) {
    z ^= z << 13;
    z ^= z >> 7;
    z ^= z << 17;
    std::memcpy(&w[i], &z, 8);
  }
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.data() + r * rb;
    if (f == WeightFormat::kBF16) {
      for (int64_t k = 0; k < kNIn; ++k) row[2 * k + 1] = 0x3c + (row[2 * k + 1] & 1);  // ~0.01
    } else {
      for (int64_t b = 0; b < kNIn / hm::kQ8BlockSize; ++b) {
        uint8_t* blk = row + b * hm::kQ8BlockBytes;
        blk[1] = 0x20 + (blk[1] & 3);  // fp16 exponent near 2^-7
      }
    }
  }
  return w;
}

struct Packed {
  std::vector<uint8_t> buf;
  std::vector<float> y;
};

Packed pack_one_token(const hm::cpu::KernelOps& ops, WeightFormat f) {
  std::vector<float> x(kNIn);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& v : x) v = u(rng);
  Packed p;
  p.buf.resize(ops.packed_bytes(f, 1, kNIn) + 64);
  const float* src = x.data();
  ops.pack(f, 1, kNIn, 0, kNIn, &src, p.buf.data());
  p.y.resize(kCallRows);
  return p;
}

bool g_groups = false;  // the child measures Q8_0 rows in groups of 16 (variant "groups")

// Q8_0 weights as the variant reads them: GGUF rows, or (groups) repacked in groups of 16 rows.
std::vector<uint8_t> q8_layout(WeightFormat f, std::vector<uint8_t> w, int64_t rows) {
  if (!g_groups || f != WeightFormat::kQ8_0) return w;
  std::vector<uint8_t> g(w.size());
  hm::q8_rows16_from_gguf(w.data(), g.data(), rows, kNIn);
  return g;
}

// `rows` rows (a multiple of 16 for groups) from w at T = 1.
void dot(const hm::cpu::KernelOps& ops, WeightFormat f, const uint8_t* w, int64_t rows, Packed& p) {
  if (g_groups && f == WeightFormat::kQ8_0)
    ops.dot_groups_q8(w, rows / hm::kQ8GroupRows, kNIn, p.buf.data(), 1, p.y.data(), 1);
  else
    ops.dot_rows(f, w, hm::row_bytes(f, kNIn), rows, kNIn, p.buf.data(), 1, p.y.data(), 1);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Rate of one thread walking `w` in calls of kCallRows rows, `passes` times (GB/s).
double walk(const hm::cpu::KernelOps& ops, WeightFormat f, const std::vector<uint8_t>& w,
            int64_t rows, int passes, Packed& p) {
  const std::size_t rb = hm::row_bytes(f, kNIn);
  std::vector<double> rates;
  for (int it = 0; it < passes; ++it) {
    const auto t0 = Clock::now();
    for (int64_t r = 0; r + kCallRows <= rows; r += kCallRows)
      dot(ops, f, w.data() + r * rb, kCallRows, p);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    rates.push_back(static_cast<double>(rows / kCallRows * kCallRows * rb) / s / 1e9);
  }
  return median(rates);
}

hm::cpu::Isa g_isa = hm::cpu::Isa::kAvx512;  // --isa

Regimes measure(WeightFormat f, int64_t l2_bytes, int64_t dram_bytes) {
  const auto& ops = hm::cpu::kernel_ops(g_isa);
  const std::size_t rb = hm::row_bytes(f, kNIn);
  Regimes out;
  pin(0);
  {  // L2: a few hundred KiB dotted repeatedly (rows a multiple of 4: full passes only)
    const int64_t rows = std::max<int64_t>(16, l2_bytes / static_cast<int64_t>(rb) / 16 * 16);
    auto w = q8_layout(f, make_rows(f, rows, 1), rows);
    Packed p = pack_one_token(ops, f);
    p.y.resize(rows);
    std::vector<double> rates;
    for (int it = 0; it < 15; ++it) {
      const int reps = 200;
      const auto t0 = Clock::now();
      for (int i = 0; i < reps; ++i) dot(ops, f, w.data(), rows, p);
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      rates.push_back(static_cast<double>(rows * rb) * reps / s / 1e9);
    }
    out.l2 = median(rates);
  }
  const int64_t rows = dram_bytes / static_cast<int64_t>(rb) / kCallRows * kCallRows;
  {
    auto w = q8_layout(f, make_rows(f, rows, 2), rows);
    Packed p = pack_one_token(ops, f);
    out.dram1 = walk(ops, f, w, rows, 5, p);
  }
  {
    const int64_t half = rows / 2 / kCallRows * kCallRows;
    std::vector<uint8_t> w[2] = {q8_layout(f, make_rows(f, half, 3), half),
                                 q8_layout(f, make_rows(f, half, 4), half)};
    double rate[2] = {0, 0};
    std::thread th[2];
    for (int i = 0; i < 2; ++i)
      th[i] = std::thread([&, i] {
        pin(i);
        Packed p = pack_one_token(ops, f);
        rate[i] = walk(ops, f, w[i], half, 5, p);
      });
    for (auto& t : th) t.join();
    out.dram2 = (rate[0] + rate[1]) / 2;
  }
  return out;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::size_t a = 0;
  while (a <= s.size()) {
    const std::size_t b = s.find(',', a);
    v.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string variants = "pair", json;
  int rounds = 7;
  int64_t l2_kib = 512, dram_mib = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--variants")
      variants = v;
    else if (a == "--isa" && (v == "avx512" || v == "avx2"))
      g_isa = hm::cpu::parse_isa(v);
    else if (a == "--rounds")
      rounds = static_cast<int>(flag_int(a, v, 1, 1000));
    else if (a == "--l2-kib")
      l2_kib = flag_int(a, v, 1, 1 << 20);
    else if (a == "--dram-mib")
      dram_mib = flag_int(a, v, 1, 1 << 20);
    else if (a == "--json")
      json = v;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const bool runnable = g_isa == hm::cpu::Isa::kAvx2
                            ? hm::cpu::avx2_usable()
                            : g_isa == hm::cpu::Isa::kAvx512 && hm::cpu::avx512_usable();
  if (!runnable) {
    std::fprintf(stderr, "this machine cannot run the %s variant (or it is not avx512/avx2)\n",
                 hm::cpu::isa_name(g_isa));
    return 1;
  }
  const auto names = split(variants);
  // res[variant][format] per round
  std::vector<std::vector<std::vector<Regimes>>> res(names.size(),
                                                     std::vector<std::vector<Regimes>>(2));
  for (int r = 0; r < rounds; ++r)
    for (std::size_t v = 0; v < names.size(); ++v) {
      struct Pair {
        Regimes g[2];
      } pr;
      const bool ok = run_in_child(
          [&] {
            g_groups = names[v] == "groups";
            if (!g_groups) setenv("HYBRID_MOE_Q8_KERNEL", names[v].c_str(), 1);
            return Pair{{measure(WeightFormat::kBF16, l2_kib << 10, dram_mib << 20),
                         measure(WeightFormat::kQ8_0, l2_kib << 10, dram_mib << 20)}};
          },
          &pr);
      if (!ok) {
        std::fprintf(stderr, "variant %s failed\n", names[v].c_str());
        return 1;
      }
      const Regimes* g = pr.g;
      for (int f = 0; f < 2; ++f) res[v][f].push_back(g[f]);
      std::fprintf(stderr, "round %d %s: q8 l2 %.1f dram1 %.2f dram2 %.2f\n", r, names[v].c_str(),
                   g[1].l2, g[1].dram1, g[1].dram2);
    }
  auto med = [&](std::size_t v, int f, double Regimes::*m) {
    std::vector<double> x;
    for (const auto& g : res[v][f]) x.push_back(g.*m);
    return median(x);
  };
  // q8 / bf16 per round, then the median (same child: same machine state)
  auto ratio_bf16 = [&](std::size_t v, double Regimes::*m) {
    std::vector<double> x;
    for (std::size_t i = 0; i < res[v][1].size(); ++i)
      x.push_back(res[v][1][i].*m / res[v][0][i].*m);
    return median(x);
  };
  double Regimes::*ms[3] = {&Regimes::l2, &Regimes::dram1, &Regimes::dram2};
  const char* mn[3] = {"l2", "dram1", "dram2"};
  std::printf("GB/s per thread, median of %d rounds, n_in %lld, T = 1, %s\n", rounds,
              static_cast<long long>(kNIn), hm::cpu::isa_name(g_isa));
  std::printf("%-8s %-6s %9s %9s %10s %12s\n", "variant", "regime", "bf16", "q8_0", "q8_0/bf16",
              "q8_0/base");
  std::string js = "{\"rounds\": " + std::to_string(rounds) + ", \"baseline\": \"" + names[0] +
                   "\", \"results\": [";
  for (std::size_t v = 0; v < names.size(); ++v)
    for (int m = 0; m < 3; ++m) {
      const double b = med(v, 0, ms[m]), q = med(v, 1, ms[m]), rb = ratio_bf16(v, ms[m]);
      const double base = q / med(0, 1, ms[m]);
      std::printf("%-8s %-6s %9.2f %9.2f %10.3f %12.3f\n", names[v].c_str(), mn[m], b, q, rb, base);
      char buf[400];
      std::snprintf(buf, sizeof(buf),
                    "%s{\"variant\": \"%s\", \"regime\": \"%s\", \"bf16_gbps\": %.3f, "
                    "\"q8_0_gbps\": %.3f, \"q8_over_bf16\": %.4f, \"q8_over_baseline\": %.4f}",
                    (v || m) ? ", " : "", names[v].c_str(), mn[m], b, q, rb, base);
      js += buf;
    }
  js += "]}\n";
  return write_text_file(json, js) ? 0 : 1;
}
