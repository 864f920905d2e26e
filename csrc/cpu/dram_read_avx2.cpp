// [NOTE] AVX2 read loop of the DRAM reader (see dram_read_kernels.h), for machines without AVX512:
// 256-bit aligned loads, 4 cache lines (8 loads) per iteration into 8 independent accumulators,
// so the out-of-order window holds many lines in flight with ~1 instruction per 32 bytes (the
// scalar loops need one per 8 bytes and read ~25% below torch's sum on the Zen 3 dev machine).
#include <immintrin.h>

#include "cpu/dram_read_kernels.h"

namespace hm::cpu::dram {

uint64_t read_avx2_linear(const uint64_t* p, std::size_t n) {
  constexpr std::size_t kStep = 32;  // words per iteration: 4 lines
  __m256i a[8];
  for (auto& v : a) v = _mm256_setzero_si256();
  std::size_t i = 0;
  for (; i + kStep <= n; i += kStep)
    for (int j = 0; j < 8; ++j)
      a[j] = _mm256_add_epi64(a[j], _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i) + j));
  // Lane sums in uint64 (wrapping), as the scalar loops do.
  alignas(32) uint64_t lanes[4];
  __m256i s = a[0];
  for (int j = 1; j < 8; ++j) s = _mm256_add_epi64(s, a[j]);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) sum += p[i];
  return sum;
}

}  // namespace hm::cpu::dram
