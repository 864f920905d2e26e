// DRAM reader: every read loop returns the exact sum of the words it was given (so it reads every
// word once, remainders included), and measure_dram_read reports every method with the best one.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/check.h"
#include "cpu/dram_read.h"
#include "cpu/dram_read_kernels.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "hm_test.h"

HM_TEST(cpu_dram_read_loops_sum_every_word) {
  std::vector<std::pair<const char*, hm::cpu::dram::ReadFn>> fns{
      {"scalar-linear", hm::cpu::dram::read_scalar_linear},
      {"scalar-streams", hm::cpu::dram::read_scalar_streams}};
#if HYBRID_MOE_HAVE_AVX2
  if (hm::cpu::avx2_usable()) fns.push_back({"avx2-linear", hm::cpu::dram::read_avx2_linear});
#endif
#if HYBRID_MOE_HAVE_AVX512
  if (hm::cpu::avx512_usable()) {
    fns.push_back({"avx512-linear", hm::cpu::dram::read_avx512_linear});
    fns.push_back({"avx512-linear-pf", hm::cpu::dram::read_avx512_linear_pf});
    fns.push_back({"avx512-streams", hm::cpu::dram::read_avx512_streams});
  }
#endif
  constexpr std::size_t kMax = 20000;
  struct Free {
    void operator()(uint64_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint64_t, Free> buf(static_cast<uint64_t*>(std::aligned_alloc(64, kMax * 8)));
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (std::size_t i = 0; i < kMax; ++i)
    buf.get()[i] = (x = x * 6364136223846793005ull + 1442695040888963407ull);
  // Sizes: empty, below one line, not a multiple of 4 streams x lines, a large odd count.
  for (std::size_t n : {std::size_t(0), std::size_t(5), std::size_t(8), std::size_t(33),
                        std::size_t(1000), std::size_t(4103), kMax - 1}) {
    uint64_t ref = 0;
    for (std::size_t i = 0; i < n; ++i) ref += buf.get()[i];
    for (const auto& [name, fn] : fns) {
      const uint64_t got = fn(buf.get(), n);
      if (got != ref)
        std::fprintf(stderr, "%s n=%zu: %llu != %llu\n", name, n,
                     static_cast<unsigned long long>(got), static_cast<unsigned long long>(ref));
      HM_EXPECT(got == ref);
    }
  }
}

HM_TEST(cpu_dram_read_reports_every_method_and_the_best) {
  hm::cpu::ThreadPool pool(2, false);
  const hm::cpu::DramRead r = hm::cpu::measure_dram_read(pool, std::size_t(64) << 20, 1);
  HM_EXPECT(r.methods.size() >= 3);
  std::set<std::string> names;
  double best = 0.0;
  for (const auto& m : r.methods) {
    HM_EXPECT(m.gbps > 0.1 && m.gbps < 5000.0);
    names.insert(m.name);
    best = std::max(best, m.gbps);
  }
  HM_EXPECT(names.size() == r.methods.size());
  HM_EXPECT(names.count(r.best) == 1);
  HM_EXPECT(r.best_gbps == best);
  HM_EXPECT_THROWS(hm::cpu::measure_dram_read(pool, std::size_t(1) << 20, 1), hm::ValueError);
  HM_EXPECT_THROWS(hm::cpu::measure_dram_read(pool, std::size_t(64) << 20, 0), hm::ValueError);
}
