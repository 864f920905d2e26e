// [NOTE] AVX512 read loops of the DRAM reader (see dram_read_kernels.h). Full-width aligned loads,
// 4 cache lines per iteration into 4 independent accumulators (one vpaddq each, 1-cycle chains),
// so a core keeps as many lines in flight as its fill buffers allow with ~1.25 instructions per
// 64 bytes (the out-of-order window spans ~25 KiB of loads).
#include <immintrin.h>

#include "cpu/dram_read_kernels.h"

namespace hm::cpu::dram {
namespace {

constexpr std::size_t kLineWords = 8;  // 64-bit words per 64-byte line

// Lane sums in uint64 (wrapping): _mm512_reduce_add_epi64 adds as signed long long in GCC's
// header, which UBSan reports as overflow on these arbitrary sums.
inline uint64_t reduce4(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i s = _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, s);
  uint64_t sum = 0;
  for (uint64_t v : lanes) sum += v;
  return sum;
}

template <bool kPrefetch>
uint64_t linear(const uint64_t* p, std::size_t n) {
  constexpr std::size_t kAheadWords = 1024 / 8;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t i = 0;
  for (; i + 4 * kLineWords <= n; i += 4 * kLineWords) {
    if (kPrefetch) {  // 2 prefetches per 4 lines would leave holes: one per line
      _mm_prefetch(reinterpret_cast<const char*>(p + i + kAheadWords), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i + kAheadWords + 8), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i + kAheadWords + 16), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i + kAheadWords + 24), _MM_HINT_T0);
    }
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 8));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 16));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 24));
  }
  uint64_t rest = 0;
  for (; i < n; ++i) rest += p[i];
  return reduce4(a0, a1, a2, a3) + rest;
}

}  // namespace

uint64_t read_avx512_linear(const uint64_t* p, std::size_t n) {
  return linear<false>(p, n);
}
uint64_t read_avx512_linear_pf(const uint64_t* p, std::size_t n) {
  return linear<true>(p, n);
}

uint64_t read_avx512_streams(const uint64_t* p, std::size_t n) {
  constexpr std::size_t kAheadWords = 2048 / 8;
  const std::size_t part = n / 4 / kLineWords * kLineWords;
  const uint64_t* s0 = p;
  const uint64_t* s1 = p + part;
  const uint64_t* s2 = p + 2 * part;
  const uint64_t* s3 = p + 3 * part;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (std::size_t i = 0; i < part; i += kLineWords) {
    _mm_prefetch(reinterpret_cast<const char*>(s0 + i + kAheadWords), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s1 + i + kAheadWords), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s2 + i + kAheadWords), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s3 + i + kAheadWords), _MM_HINT_T0);
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(s0 + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(s1 + i));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(s2 + i));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(s3 + i));
  }
  uint64_t rest = 0;
  for (std::size_t i = 4 * part; i < n; ++i) rest += p[i];
  return reduce4(a0, a1, a2, a3) + rest;
}

}  // namespace hm::cpu::dram
