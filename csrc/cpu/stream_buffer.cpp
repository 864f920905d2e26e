#include "cpu/stream_buffer.h"

#include <sys/mman.h>

#include <string>

#include "core/check.h"

namespace hm::cpu {

bool stream_hugepages() {
  static const bool on = [] {
    const char* v = std::getenv("HYBRID_MOE_HUGEPAGES");
    const std::string s = v ? v : "";
    if (s.empty() || s == "1") return true;
    HM_CHECK(s == "0", "environment variable HYBRID_MOE_HUGEPAGES='", s, "': expected 0 or 1");
    return false;
  }();
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

}  // namespace hm::cpu
