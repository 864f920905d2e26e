// [NOTE] The read loops of the DRAM reader (dram_read.cpp), one per method. Each reads n_words
// 64-bit words at p (p 64-byte aligned) and returns a value that depends on every word, so the
// loads cannot be optimised away. The AVX512 loops live in dram_read_avx512.cpp and the AVX2 loop
// in dram_read_avx2.cpp (each built with its ISA's flags, run only when that ISA is usable).
#pragma once

#include <cstddef>
#include <cstdint>

namespace hm::cpu::dram {

using ReadFn = uint64_t (*)(const uint64_t* p, std::size_t n_words);

// Scalar: one linear stream, 8 independent accumulators (the hardware prefetcher alone).
uint64_t read_scalar_linear(const uint64_t* p, std::size_t n_words);
// Scalar: the range cut in 4 parts read as interleaved streams, software prefetch 2 KiB ahead.
uint64_t read_scalar_streams(const uint64_t* p, std::size_t n_words);

#if HYBRID_MOE_HAVE_AVX2
// AVX2: 4 cache lines per iteration into 8 independent ymm accumulators.
uint64_t read_avx2_linear(const uint64_t* p, std::size_t n_words);
#endif

#if HYBRID_MOE_HAVE_AVX512
// AVX512: 4 cache lines per iteration into 4 independent zmm accumulators.
uint64_t read_avx512_linear(const uint64_t* p, std::size_t n_words);
// Same plus prefetcht0 of the line 1 KiB ahead (hardware and software prefetch together).
uint64_t read_avx512_linear_pf(const uint64_t* p, std::size_t n_words);
// AVX512: 4 interleaved streams (the expert kernels' pattern), prefetch 2 KiB ahead per stream.
uint64_t read_avx512_streams(const uint64_t* p, std::size_t n_words);
#endif

}  // namespace hm::cpu::dram
