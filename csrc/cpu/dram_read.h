// [NOTE] Host DRAM read bandwidth, measured the way the expert kernels read: every worker of the
// pool (pinned one per core) streams its own contiguous share of a buffer far larger than the L3.
// The buffer is first touched by the same workers (so on multi-socket machines pages land on
// the reading socket), then read `reps` times; the median rep gives bytes / time. Two readers
// run (one linear stream per worker; four interleaved streams with software prefetch, the expert
// kernels' pattern) and the higher figure is returned: the reader must not be slower than the
// kernels it judges (on the lent Xeon the linear one alone read 80-88 GB/s while the kernels
// streamed up to 128). Used as the denominator of "fraction of DRAM bandwidth" in the CPU
// benchmark and by `hybrid-moe calibrate`, so both report the same figure (a torch sum gave 86,
// 111 and 118 GB/s on the same Xeon).
#pragma once

#include <cstddef>

#include "cpu/thread_pool.h"

namespace hm::cpu {

// GB/s (1e9 bytes per second). bytes >= 64 MiB and reps >= 1, else hm::ValueError.
double measure_dram_read_gbps(ThreadPool& pool, std::size_t bytes, int reps);

}  // namespace hm::cpu
