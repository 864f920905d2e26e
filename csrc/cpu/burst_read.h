// [NOTE] Burst read: how long the pool takes to read one call's worth of cold bytes, e.g. the
// weights of the 1-2 experts a decode layer computes on the CPU (9.4 MB per bf16 Qwen3-30B-A3B
// expert). The DRAM reader (dram_read.h) gives the steady rate of a 2 GiB pass; a short burst also
// pays the job's hand-out and join, every core's ramp-up to its streaming rate and the slowest
// core's tail. Decode's bandwidth bound (bytes / steady rate) leaves all of that out; this says
// how much of it a pure read, with no arithmetic, already pays.
// Each burst reads the next `burst_bytes` of a buffer of `buffer_bytes` (wrapping; the buffer is
// far larger than the L3, so a burst's bytes come from DRAM), cut into items of `item_bytes`
// handed out dynamically like the expert kernel's rows, with the widest linear read loop of the
// DRAM reader. Time = submit to join, on the blocking-call pool (caller + workers, or workers and
// a waiting caller). Bursts run back to back after one warm pass over the buffer.
#pragma once

#include <cstddef>

#include "cpu/thread_pool.h"

namespace hm::cpu {

struct BurstRead {
  double median_us = 0, p10_us = 0, p90_us = 0;  // per burst, submit to join
  double gbps = 0;                               // burst_bytes / median, 1e9 bytes per second
  int items = 0;                                 // items per burst
};

// burst_bytes >= 64 KiB, item_bytes a multiple of 64 in [4 KiB, burst_bytes], bursts >= 1,
// buffer_bytes >= max(256 MiB, 8 x burst_bytes); else hm::ValueError.
BurstRead measure_burst_read(const CallerPool& cp, std::size_t burst_bytes, std::size_t item_bytes,
                             int bursts, std::size_t buffer_bytes);

}  // namespace hm::cpu
