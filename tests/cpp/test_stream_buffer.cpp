// Stream buffers: the huge-page count read from smaps text (header lines, AnonHugePages fields,
// prorating by overlap), and the live /proc/self/smaps reader on a buffer of ours.
#include <cstdint>
#include <cstring>
#include <string>

#include "cpu/stream_buffer.h"
#include "hm_test.h"

namespace {

const void* at(uintptr_t a) {
  return reinterpret_cast<const void*>(a);
}

// Two mappings: [0x10000000, 0x10800000) 8 MiB with 4 MiB on huge pages, and [0x20000000,
// 0x20400000) 4 MiB with none; the fields of a real smaps entry around them.
const char* kSmaps =
    "10000000-10800000 rw-p 00000000 00:00 0 \n"
    "Size:               8192 kB\n"
    "Rss:                8192 kB\n"
    "AnonHugePages:      4096 kB\n"
    "FilePmdMapped:         0 kB\n"
    "VmFlags: rd wr mr mw me ac hg\n"
    "20000000-20400000 rw-p 00000000 00:00 0                          [heap]\n"
    "Size:               4096 kB\n"
    "AnonHugePages:         0 kB\n"
    "VmFlags: rd wr mr mw me ac\n";

}  // namespace

HM_TEST(stream_buffer_huge_pages_from_smaps_text) {
  using hm::cpu::huge_page_bytes_in_smaps;
  const std::string s = kSmaps;
  const std::size_t mib = std::size_t(1) << 20;
  // The whole first mapping: its 4 MiB; half of it: prorated to 2 MiB.
  HM_EXPECT(huge_page_bytes_in_smaps(s, {{at(0x10000000), 8 * mib}}) == 4 * mib);
  HM_EXPECT(huge_page_bytes_in_smaps(s, {{at(0x10400000), 4 * mib}}) == 2 * mib);
  // A range reaching past the mapping counts only the overlap; two ranges add up.
  HM_EXPECT(huge_page_bytes_in_smaps(s, {{at(0x10600000), 64 * mib}}) == 1 * mib);
  HM_EXPECT(huge_page_bytes_in_smaps(s, {{at(0x10000000), 2 * mib}, {at(0x10600000), 2 * mib}}) ==
            2 * mib);
  // The second mapping has none; no range, or one outside every mapping: 0.
  HM_EXPECT(huge_page_bytes_in_smaps(s, {{at(0x20000000), 4 * mib}}) == 0);
  HM_EXPECT(huge_page_bytes_in_smaps(s, {}) == 0);
  HM_EXPECT(huge_page_bytes_in_smaps(s, {{at(0x30000000), 4 * mib}}) == 0);
  HM_EXPECT(huge_page_bytes_in_smaps("", {{at(0x10000000), 8 * mib}}) == 0);
}

HM_TEST(stream_buffer_huge_pages_live_within_bounds) {
  // Whatever THP gives (it depends on the machine), the count stays within the buffer's size.
  const std::size_t bytes = std::size_t(16) << 20;
  hm::cpu::StreamBuffer buf = hm::cpu::alloc_stream_buffer(bytes);
  std::memset(buf.get(), 1, bytes);
  const std::size_t huge = hm::cpu::huge_page_bytes({{buf.get(), bytes}});
  HM_EXPECT(huge <= bytes);
}
