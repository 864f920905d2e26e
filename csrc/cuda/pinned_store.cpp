#include "cuda/pinned_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cpu/stream_buffer.h"
#include "cuda/cuda_check.h"

namespace hm::cuda {

namespace {

// n bytes (a multiple of 2 MiB) of anonymous memory at a 2 MiB boundary, or nullptr. Fresh
// anonymous pages read as zero, so nothing is touched here (cudaHostRegister faults them in).
void* map_aligned(std::size_t n) {
  const std::size_t align = cpu::kHugePageBytes;
  void* raw = mmap(nullptr, n + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + align - 1) / align * align;
  if (start > base) munmap(raw, start - base);  // trim to [start, start + n)
  if (base + align > start) munmap(reinterpret_cast<void*>(start + n), base + align - start);
  return reinterpret_cast<void*>(start);
}

}  // namespace

PinnedExpertStore::PinnedExpertStore(const ExpertLayout& layout, int64_t n_experts)
    : layout_(layout), n_experts_(n_experts) {
  HM_CHECK(n_experts > 0, "n_experts must be >= 1, got ", n_experts);
  HM_CHECK(layout.stride > 0, "expert layout has zero stride");
  const std::size_t bytes = nbytes();
  std::string why = "HYBRID_MOE_HUGEPAGES=0";
  if (cpu::stream_hugepages()) {
    const std::size_t n =
        (bytes + cpu::kHugePageBytes - 1) / cpu::kHugePageBytes * cpu::kHugePageBytes;
    void* p = map_aligned(n);
    HM_CHECK_RT(p != nullptr, "could not map ", n, " bytes of host memory for ", n_experts,
                " experts of ", layout.stride, " bytes");
#ifdef MADV_HUGEPAGE
    madvise(p, n, MADV_HUGEPAGE);  // a hint: ignored without THP
#endif
    const cudaError_t err = cudaHostRegister(p, n, cudaHostRegisterPortable);
    if (err == cudaSuccess) {
      data_ = static_cast<uint8_t*>(p);
      mapped_bytes_ = n;
      backing_ = "huge-page advised, registered";
      return;
    }
    (void)cudaGetLastError();
    munmap(p, n);
    why = std::string("cudaHostRegister: ") + cudaGetErrorName(err);
  }
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    HM_CHECK_RT(false, "could not allocate ", bytes, " bytes of pinned host memory for ", n_experts,
                " experts of ", layout.stride, " bytes (", cudaGetErrorName(err), ": ",
                cudaGetErrorString(err), ")");
  }
  data_ = static_cast<uint8_t*>(p);
  std::memset(data_, 0, bytes);
  backing_ = "cudaHostAlloc (" + why + ")";
}

PinnedExpertStore::~PinnedExpertStore() {
  if (!data_) return;
  if (mapped_bytes_ > 0) {
    (void)cudaHostUnregister(data_);
    munmap(data_, mapped_bytes_);
  } else {
    (void)cudaFreeHost(data_);
  }
}

uint8_t* PinnedExpertStore::expert_ptr(int64_t e) {
  HM_CHECK(e >= 0 && e < n_experts_, "expert id must be in [0, ", n_experts_, "), got ", e);
  return data_ + static_cast<std::size_t>(e) * layout_.stride;
}

const uint8_t* PinnedExpertStore::expert_ptr(int64_t e) const {
  HM_CHECK(e >= 0 && e < n_experts_, "expert id must be in [0, ", n_experts_, "), got ", e);
  return data_ + static_cast<std::size_t>(e) * layout_.stride;
}

void PinnedExpertStore::fill_expert(int64_t e, const void* src, std::size_t nbytes,
                                    std::size_t offset) {
  HM_CHECK(src != nullptr, "src must not be null");
  HM_CHECK(offset + nbytes <= layout_.stride, "offset + nbytes must be <= expert stride ",
           layout_.stride, ", got ", offset, " + ", nbytes);
  std::memcpy(expert_ptr(e) + offset, src, nbytes);
}

void PinnedExpertStore::load_file(const std::string& path, std::size_t file_offset, int64_t first,
                                  int64_t count) {
  HM_CHECK(count >= 0 && first >= 0 && first + count <= n_experts_, "experts [", first, ", ",
           first + count, ") must lie in [0, ", n_experts_, ")");
  const int fd = ::open(path.c_str(), O_RDONLY);
  HM_CHECK(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
  // Check the size first so that a short file is reported before anything is read.
  struct stat st {};
  const std::size_t need = file_offset + static_cast<std::size_t>(count) * layout_.stride;
  if (::fstat(fd, &st) != 0 || static_cast<std::size_t>(st.st_size) < need) {
    const long long have = ::fstat(fd, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
    ::close(fd);
    HM_CHECK(false, "file '", path, "' ends before ", count, " experts of ", layout_.stride,
             " bytes from offset ", file_offset, ": it has ", have, " bytes, ", need, " needed");
  }
  uint8_t* dst = data_ + static_cast<std::size_t>(first) * layout_.stride;
  std::size_t left = static_cast<std::size_t>(count) * layout_.stride;
  off_t pos = static_cast<off_t>(file_offset);
  while (left > 0) {
    const ssize_t got = ::pread(fd, dst, left, pos);
    if (got <= 0) {
      const int e = errno;
      ::close(fd);
      HM_CHECK(got != 0, "file '", path, "' ends before ", count, " experts of ", layout_.stride,
               " bytes from offset ", file_offset);
      HM_CHECK_RT(false, "reading '", path, "' failed: ", std::strerror(e));
    }
    dst += got;
    left -= static_cast<std::size_t>(got);
    pos += got;
  }
  ::close(fd);
}

}  // namespace hm::cuda
