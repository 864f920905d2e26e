// [NOTE] Device slab (issue 5 item 2): one cudaMalloc of n_slots equal slots of `layout.stride`
// bytes; slot s holds one expert in the byte layout of core/weight_format.h at
// base + s * stride. The number of slots comes from a budget in bytes or from a fraction of all
// experts. Running out of device memory raises RuntimeError naming the budget and the free memory.
// Which expert a slot holds is the Mover's business (cuda/mover.h), not the slab's.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/weight_format.h"

namespace hm::cuda {

class DeviceSlab {
 public:
  DeviceSlab(const ExpertLayout& layout, int n_slots, int device = 0);
  ~DeviceSlab();
  DeviceSlab(const DeviceSlab&) = delete;
  DeviceSlab& operator=(const DeviceSlab&) = delete;

  // As many slots as `budget_bytes` holds (ValueError when it holds none).
  static int slots_for_budget(const ExpertLayout& layout, std::size_t budget_bytes);
  // ceil(fraction * total_experts) slots, fraction in (0, 1].
  static int slots_for_fraction(int64_t total_experts, double fraction);

  const ExpertLayout& layout() const { return layout_; }
  int n_slots() const { return n_slots_; }
  int device() const { return device_; }
  std::size_t stride() const { return layout_.stride; }
  std::size_t nbytes() const { return static_cast<std::size_t>(n_slots_) * layout_.stride; }
  uint8_t* base() const { return base_; }
  uint8_t* slot_ptr(int s) const;  // ValueError when s is out of range
  // Synchronous copy of slot s's `stride` bytes to host memory dst (tests, debugging).
  void read_slot(int s, void* dst) const;

 private:
  ExpertLayout layout_;
  int n_slots_ = 0;
  int device_ = 0;
  uint8_t* base_ = nullptr;
};

}  // namespace hm::cuda
