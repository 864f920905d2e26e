// [NOTE] Host buffers that the CPU kernels stream (expert stores, the DRAM reader's buffer): 2 MiB
// aligned and advised to transparent huge pages (madvise MADV_HUGEPAGE) before first touch, so a
// kernel streaming experts takes one TLB miss per 2 MiB instead of per 4 KiB. On the 2-core Zen 3
// development machine (THP "madvise" mode) bf16 experts streamed 3-25% faster at T=1 and T=4 this
// way (bench/RESULTS.md, session 5). HYBRID_MOE_HUGEPAGES=0 leaves the advice out (A/B runs, or
// systems where khugepaged stalls hurt); the advice is a hint that a kernel without THP ignores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hm::cpu {

struct StreamBufferFree {
  void operator()(void* p) const { std::free(p); }
};
using StreamBuffer = std::unique_ptr<uint8_t, StreamBufferFree>;

inline constexpr std::size_t kHugePageBytes = std::size_t(2) << 20;

// Whether stream buffers are advised to huge pages (HYBRID_MOE_HUGEPAGES, read once: unset or 1
// yes, 0 no; anything else raises hm::ValueError).
bool stream_hugepages();

// bytes (> 0) rounded up to 2 MiB, 2 MiB aligned, advised as above, not touched. Raises
// hm::RuntimeError when out of memory.
StreamBuffer alloc_stream_buffer(std::size_t bytes);

// Address ranges: (start, length in bytes), not overlapping.
using PageRanges = std::vector<std::pair<const void*, std::size_t>>;

// Bytes of the ranges that the kernel backs with transparent huge pages now, from /proc/self/smaps
// (AnonHugePages of each mapping that overlaps a range, prorated by the overlap). 0 where that
// file cannot be read (not Linux). The kernel walks the page tables to write that file: call it
// once, not per step.
std::size_t huge_page_bytes(const PageRanges& ranges);
// The same count from the text of an smaps file (mapping header lines "start-end ...", then
// "AnonHugePages: N kB" among each mapping's fields).
std::size_t huge_page_bytes_in_smaps(const std::string& smaps, const PageRanges& ranges);

}  // namespace hm::cpu
