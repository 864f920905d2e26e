// StreamMemOps (stream_memops.h): driver entry points resolved through the runtime API.
#include "cuda/stream_memops.h"

#include <cuda.h>

#include <map>
#include <mutex>

#include "cuda/cuda_check.h"

namespace hm::cuda {

namespace {

using WaitFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

void* entry(const char* name, std::string& why) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q);
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || fn == nullptr) {
    (void)cudaGetLastError();
    why = std::string(name) + " not available from the driver (" + cudaGetErrorName(e) + ")";
    return nullptr;
  }
  return fn;
}

void check(CUresult r, const char* what) {
  HM_CHECK_RT(r == CUDA_SUCCESS, what, " failed with CUresult ", static_cast<int>(r));
}

}  // namespace

const StreamMemOps& StreamMemOps::get(int device) {  // NOLINT: device keys the cache
  static std::mutex mu;
  static std::map<int, StreamMemOps> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  StreamMemOps m;
  m.wait32_ = entry("cuStreamWaitValue32", m.why_);
  if (m.wait32_) m.write32_ = entry("cuStreamWriteValue32", m.why_);
  m.ok_ = m.wait32_ && m.write32_;  // V2 memops: on by default (the runtime probes them once)
  return cache.emplace(device, m).first->second;
}

void StreamMemOps::wait_eq(void* stream, const void* addr, uint32_t value) const {
  HM_CHECK_RT(ok_, "stream memory operations unavailable: ", why_);
  check(reinterpret_cast<WaitFn>(wait32_)(static_cast<CUstream>(stream),
                                          reinterpret_cast<CUdeviceptr>(addr), value,
                                          CU_STREAM_WAIT_VALUE_EQ),
        "cuStreamWaitValue32");
}

void StreamMemOps::write(void* stream, void* addr, uint32_t value) const {
  HM_CHECK_RT(ok_, "stream memory operations unavailable: ", why_);
  check(reinterpret_cast<WriteFn>(write32_)(static_cast<CUstream>(stream),
                                            reinterpret_cast<CUdeviceptr>(addr), value,
                                            CU_STREAM_WRITE_VALUE_DEFAULT),
        "cuStreamWriteValue32");
}

}  // namespace hm::cuda
