#include "cuda/cuda_check.h"
#include "cuda/device_info.h"

namespace hm::cuda {

int device_count(std::string* why_none) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls start clean
    if (why_none) {
      int driver = 0;
      const bool no_driver = cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0;
      *why_none =
          no_driver ? std::string("no NVIDIA driver found (") : std::string("CUDA refused (");
      *why_none += std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err) + ")";
    }
    return 0;
  }
  if (n == 0 && why_none) *why_none = "no CUDA device";
  return n;
}

std::vector<DeviceInfo> devices() {
  std::vector<DeviceInfo> out;
  const int n = device_count();
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    HM_CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
    DeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.total_memory = prop.totalGlobalMem;
    d.major = prop.major;
    d.minor = prop.minor;
    d.multiprocessors = prop.multiProcessorCount;
    int previous = 0;
    HM_CUDA_CHECK(cudaGetDevice(&previous));
    HM_CUDA_CHECK(cudaSetDevice(i));
    std::size_t free_b = 0, total_b = 0;
    HM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    HM_CUDA_CHECK(cudaSetDevice(previous));
    d.free_memory = free_b;
    out.push_back(d);
  }
  return out;
}

int runtime_version() {
  int v = 0;
  HM_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace hm::cuda
