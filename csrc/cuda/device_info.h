// What CUDA devices this process sees. Plain C++ header: the bindings include it without CUDA.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace hm::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  std::size_t total_memory = 0;  // bytes
  std::size_t free_memory = 0;   // bytes, at query time
  int major = 0, minor = 0;      // compute capability
  int multiprocessors = 0;
};

// Number of usable devices; 0 (never an exception) when there is no driver or no device, in which
// case `why_none` receives the CUDA error text.
int device_count(std::string* why_none = nullptr);
std::vector<DeviceInfo> devices();  // empty when device_count() == 0
int runtime_version();  // e.g. 13000 for CUDA 13.0 (the static cudart this was built with)
int driver_version();   // 0 without a driver

}  // namespace hm::cuda
