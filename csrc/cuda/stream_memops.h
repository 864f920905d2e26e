// [NOTE] Stream memory operations (cuStreamWaitValue32 / cuStreamWriteValue32, CUDA driver API),
// reached through cudaGetDriverEntryPointByVersion so the module keeps linking only the static
// runtime (no libcuda at link time). The runtime's decode path uses them as doorbells in mapped
// host memory instead of host functions: the stream writes a word the runtime's planner thread
// polls, and waits (in the GPU's front end, no SM busy) for a word the planner writes. A round trip
// costs PCIe latency (~1-2 us) instead of a host-function hand-off through the driver's callback
// thread (tens of us under load). Both operations are captured into CUDA graphs as memop nodes.
// Writes keep their default memory barrier: everything earlier in the stream (e.g. a D2H copy)
// is visible to the host before the written word.
#pragma once

#include <cstdint>
#include <string>

namespace hm::cuda {

class StreamMemOps {
 public:
  // Resolved once per process (per device key); ok() is false (with why()) when the driver does
  // not offer them. Never throws. Whether the device honours them is probed by the caller.
  static const StreamMemOps& get(int device);

  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }

  // Enqueue on `stream`: block the stream until *addr == value (addr: a device pointer, e.g. the
  // device view of mapped host memory). Throws RuntimeError on a driver error.
  void wait_eq(void* stream, const void* addr, uint32_t value) const;
  // Enqueue on `stream`: *addr = value, after everything before it in the stream.
  void write(void* stream, void* addr, uint32_t value) const;

 private:
  bool ok_ = false;
  std::string why_;
  void* wait32_ = nullptr;
  void* write32_ = nullptr;
};

}  // namespace hm::cuda
