// [NOTE] Pinned host store (DESIGN.md section 3, issue 5 item 1).
//
// Every expert's weights (gate, up, down in the layout of core/weight_format.h) as ONE contiguous
// byte range of `layout.stride` bytes in page-locked host memory, experts back to back:
//   expert e occupies [e * stride, (e + 1) * stride). The padding bytes are zero.
// Page-locked memory is what lets the copy engine move an expert at ~40 GB/s; pageable copies run
// at 6-10 GB/s on the GPU machine and are never on the hot path. Filling: from any host pointer
// (e.g. a torch CPU tensor's data_ptr(), one memcpy into the pinned range) or straight from a file
// with pread() into the pinned range, so no pageable staging copy is made.
// Backing: with HYBRID_MOE_HUGEPAGES (default on, cpu/stream_buffer.h) the range is an anonymous
// mapping advised to transparent huge pages and then page-locked with cudaHostRegister, so the CPU
// kernels that stream experts from it in decode take one TLB miss per 2 MiB instead of per 4 KiB
// (cudaHostAlloc's memory is 4 KiB pages). Where registration is refused, and with
// HYBRID_MOE_HUGEPAGES=0, cudaHostAlloc as before; backing() says which.
// Plain C++ header: the bindings include it also in builds without CUDA (they then never call it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/weight_format.h"

namespace hm::cuda {

class PinnedExpertStore {
 public:
  // Allocates n_experts * layout.stride bytes of page-locked memory (zeroed). Raises RuntimeError
  // naming the bytes asked for when the allocation is refused.
  PinnedExpertStore(const ExpertLayout& layout, int64_t n_experts);
  ~PinnedExpertStore();
  PinnedExpertStore(const PinnedExpertStore&) = delete;
  PinnedExpertStore& operator=(const PinnedExpertStore&) = delete;

  const ExpertLayout& layout() const { return layout_; }
  int64_t n_experts() const { return n_experts_; }
  std::size_t stride() const { return layout_.stride; }
  std::size_t nbytes() const { return static_cast<std::size_t>(n_experts_) * layout_.stride; }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  // How the range is backed, e.g. "huge-page advised, registered" or "cudaHostAlloc (...why)".
  const std::string& backing() const { return backing_; }
  uint8_t* expert_ptr(int64_t e);  // ValueError when e is out of range
  const uint8_t* expert_ptr(int64_t e) const;

  // Copies `nbytes` (<= stride) from host memory `src` into expert e's range at byte `offset`.
  void fill_expert(int64_t e, const void* src, std::size_t nbytes, std::size_t offset = 0);
  // Reads `count` experts of exactly `stride` bytes each, stored back to back in `path` starting
  // at `file_offset`, into experts [first, first + count), with pread() straight into pinned
  // memory.
  void load_file(const std::string& path, std::size_t file_offset, int64_t first, int64_t count);

 private:
  ExpertLayout layout_;
  int64_t n_experts_ = 0;
  uint8_t* data_ = nullptr;
  std::size_t mapped_bytes_ = 0;  // > 0: data_ is our mapping, registered (else cudaHostAlloc)
  std::string backing_;
};

}  // namespace hm::cuda
