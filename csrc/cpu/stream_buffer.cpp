#include "cpu/stream_buffer.h"

#include <sys/mman.h>

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

}  // namespace hm::cpu
