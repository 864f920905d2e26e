#include "cuda/device_slab.h"

#include <cmath>

#include "cuda/cuda_check.h"

namespace hm::cuda {

int DeviceSlab::slots_for_budget(const ExpertLayout& layout, std::size_t budget_bytes) {
  HM_CHECK(layout.stride > 0, "expert layout has zero stride");
  const std::size_t n = budget_bytes / layout.stride;
  HM_CHECK(n >= 1, "budget_bytes=", budget_bytes, " holds no expert: one slot needs ",
           layout.stride, " bytes");
  HM_CHECK(n <= (1u << 30), "budget_bytes=", budget_bytes, " asks for too many slots (", n, ")");
  return static_cast<int>(n);
}

int DeviceSlab::slots_for_fraction(int64_t total_experts, double fraction) {
  HM_CHECK(total_experts >= 1, "total_experts must be >= 1, got ", total_experts);
  HM_CHECK(fraction > 0.0 && fraction <= 1.0, "fraction must be in (0, 1], got ", fraction);
  return static_cast<int>(std::ceil(fraction * static_cast<double>(total_experts) - 1e-9));
}

DeviceSlab::DeviceSlab(const ExpertLayout& layout, int n_slots, int device)
    : layout_(layout), n_slots_(n_slots), device_(device) {
  HM_CHECK(n_slots >= 1, "n_slots must be >= 1, got ", n_slots);
  int n_dev = 0;
  HM_CUDA_CHECK(cudaGetDeviceCount(&n_dev));
  HM_CHECK(device >= 0 && device < n_dev, "device must be in [0, ", n_dev, "), got ", device);
  HM_CUDA_CHECK(cudaSetDevice(device));
  const std::size_t bytes = nbytes();
  std::size_t free_b = 0, total_b = 0;
  HM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  void* p = nullptr;
  const cudaError_t err = bytes <= free_b ? cudaMalloc(&p, bytes) : cudaErrorMemoryAllocation;
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    HM_CHECK_RT(false, "out of device memory: the expert slab budget of ", bytes, " bytes (",
                n_slots, " slots x ", layout.stride, " bytes) does not fit; device ", device,
                " has ", free_b, " bytes free of ", total_b, " (", cudaGetErrorName(err),
                "). Lower the budget.");
  }
  base_ = static_cast<uint8_t*>(p);
}

DeviceSlab::~DeviceSlab() {
  if (base_) (void)cudaFree(base_);
}

uint8_t* DeviceSlab::slot_ptr(int s) const {
  HM_CHECK(s >= 0 && s < n_slots_, "slot must be in [0, ", n_slots_, "), got ", s);
  return base_ + static_cast<std::size_t>(s) * layout_.stride;
}

void DeviceSlab::read_slot(int s, void* dst) const {
  HM_CHECK(dst != nullptr, "dst must not be null");
  HM_CUDA_CHECK(cudaSetDevice(device_));
  HM_CUDA_CHECK(cudaMemcpy(dst, slot_ptr(s), layout_.stride, cudaMemcpyDeviceToHost));
}

}  // namespace hm::cuda
