#include "cpu/stream_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "core/check.h"
#include "core/env_choice.h"

namespace hm::cpu {

bool stream_hugepages() {
  static const bool on = env_choice("HYBRID_MOE_HUGEPAGES", {"0", "1"}) != 0;
  return on;
}

StreamBuffer alloc_stream_buffer(std::size_t bytes) {
  HM_CHECK(bytes > 0, "stream buffer needs bytes > 0");
  const bool huge = stream_hugepages();  // a malformed setting raises before allocating
  const std::size_t size = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  StreamBuffer buf(static_cast<uint8_t*>(std::aligned_alloc(kHugePageBytes, size)));
  HM_CHECK_RT(buf != nullptr, "out of host memory allocating ", size, " bytes");
#ifdef MADV_HUGEPAGE
  if (huge) madvise(buf.get(), size, MADV_HUGEPAGE);  // a hint: ignored without THP
#endif
  return buf;
}

std::size_t huge_page_bytes_in_smaps(const std::string& smaps, const PageRanges& ranges) {
  uintptr_t start = 0, end = 0;
  double huge = 0;
  std::size_t pos = 0;
  while (pos < smaps.size()) {
    std::size_t eol = smaps.find('\n', pos);
    if (eol == std::string::npos) eol = smaps.size();
    const std::string line = smaps.substr(pos, eol - pos);
    pos = eol + 1;
    uintmax_t s = 0, e = 0, kb = 0;
    if (std::sscanf(line.c_str(), "%jx-%jx ", &s, &e) == 2) {  // a mapping's header line
      start = static_cast<uintptr_t>(s);
      end = static_cast<uintptr_t>(e);
    } else if (std::sscanf(line.c_str(), "AnonHugePages: %ju kB", &kb) == 1 && kb > 0 &&
               end > start) {
      for (const auto& [p, len] : ranges) {
        const auto lo = reinterpret_cast<uintptr_t>(p);
        const uintptr_t a = std::max(start, lo), b = std::min(end, lo + len);
        if (b > a)
          huge += static_cast<double>(kb) * 1024.0 * static_cast<double>(b - a) /
                  static_cast<double>(end - start);
      }
    }
  }
  return static_cast<std::size_t>(huge);
}

std::size_t huge_page_bytes(const PageRanges& ranges) {
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return 0;
  std::string text;
  char buf[1 << 16];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  return huge_page_bytes_in_smaps(text, ranges);
}

}  // namespace hm::cpu
