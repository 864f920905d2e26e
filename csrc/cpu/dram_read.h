// [NOTE] Host DRAM read bandwidth, measured the way the expert kernels read: the pool's workers
// (pinned one per core) stream a buffer far larger than the L3, asked for with transparent huge
// pages (fewer TLB misses) and first touched by the same workers (pages land on the reading
// socket). Several read methods run, each `reps` times after one warm-up pass; a method's figure
// is bytes / median rep time, and the highest figure is the result: the reader must not be slower
// than the kernels it judges (on the lent Xeon a scalar linear reader read 80-88 GB/s while the
// bf16 expert kernel streamed up to 128). Methods (names as reported):
//   scalar-linear / scalar-streams: 64-bit loads, one stream or 4 prefetched streams per worker
//   avx512-linear, avx512-linear-pf, avx512-streams: 512-bit aligned loads, 4 lines per iteration
//     into 4 accumulators; no software prefetch / prefetch 1 KiB ahead / 4 streams 2 KiB ahead
//     (AVX512 machines only)
//   avx2-linear: 256-bit aligned loads, 4 lines per iteration into 8 accumulators (machines with
//     AVX2 but no AVX512)
//   avx512-chunks (avx2-chunks without AVX512, scalar-chunks without either): the linear loop
//     of the widest ISA over 4 MiB chunks handed out dynamically instead of one contiguous slab
//     per worker, so a slow or shared core (the caller is unpinned) does not set the time of the
//     whole pass.
// HYBRID_MOE_DRAM_READ_LOG=1 prints every method's figure to stderr. Used as the denominator of
// "fraction of DRAM bandwidth" in the CPU benchmark and by `hybrid-moe calibrate`.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "cpu/dram_read_kernels.h"
#include "cpu/stream_buffer.h"
#include "cpu/thread_pool.h"

namespace hm::cpu {

struct DramReadMethod {
  std::string name;
  double gbps = 0.0;  // bytes / median rep time, 1e9 bytes per second
};
struct DramRead {
  double best_gbps = 0.0;
  std::string best;                     // name of the fastest method
  std::vector<DramReadMethod> methods;  // in the order run
};

// Every method; bytes >= 64 MiB and reps >= 1, else hm::ValueError.
DramRead measure_dram_read(ThreadPool& pool, std::size_t bytes, int reps);
// The same read loops over memory the caller owns (e.g. the expert stores a benchmark streams), so
// that a kernel and the reader are judged on the same physical pages: on the lent Xeon a fresh
// buffer read ~100 GB/s in some processes and ~135 in others while a kernel tracked the reader on
// its own buffer (bench/bench_stream_threads.cpp, 2026-11-29). Each distinct read loop runs over
// 4 MiB chunks of the ranges (64-byte aligned inside each range) handed out dynamically; GB/s =
// bytes read / median rep time. Ranges totalling < 64 MiB (cache-sized) or reps < 1: ValueError.
DramRead measure_dram_read_ranges(ThreadPool& pool, const PageRanges& ranges, int reps);
// The best method's GB/s (1e9 bytes per second); same arguments.
double measure_dram_read_gbps(ThreadPool& pool, std::size_t bytes, int reps);
// The linear read loop of the widest ISA this machine runs (the chunked method's loop).
dram::ReadFn widest_linear_read();

}  // namespace hm::cpu
