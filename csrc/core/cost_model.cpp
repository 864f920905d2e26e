#include "core/cost_model.h"

#include <algorithm>

namespace hm {

void HardwareProfile::validate() const {
  HM_CHECK(dram_read_gbps > 0, "profile '", name, "': dram_read_gbps must be > 0, got ",
           dram_read_gbps);
  HM_CHECK(vram_gbps > 0, "profile '", name, "': vram_gbps must be > 0, got ", vram_gbps);
  HM_CHECK(h2d_gbps > 0, "profile '", name, "': h2d_gbps must be > 0, got ", h2d_gbps);
  HM_CHECK(cpu_overhead_us >= 0 && gpu_overhead_us >= 0 && gpu_layer_overhead_us >= 0 &&
               copy_latency_us >= 0 && layer_fixed_us >= 0 && decode_gpu_layer_us >= 0,
           "profile '", name, "': overheads and latencies must be >= 0 us");
  HM_CHECK(copy_stall_fraction >= 0 && copy_stall_fraction <= 2, "profile '", name,
           "': copy_stall_fraction must be in [0, 2], got ", copy_stall_fraction);
  for (const FormatCosts* f : {&bf16, &q8_0}) {
    HM_CHECK(f->cpu_efficiency > 0 && f->cpu_efficiency <= 1, "profile '", name,
             "': cpu_efficiency must be in (0, 1], got ", f->cpu_efficiency);
    HM_CHECK(f->cpu_tflops > 0 && f->gpu_tflops > 0, "profile '", name,
             "': cpu_tflops and gpu_tflops must be > 0");
  }
}

CostModel::CostModel(const HardwareProfile& profile, const ExpertLayout& layout)
    : profile_(profile), format_(layout.format), bytes_(layout.weight_bytes()) {
  profile_.validate();
  HM_CHECK(bytes_ > 0, "expert layout must have bytes > 0");
  flops_per_token_ =
      2.0 * 3.0 * static_cast<double>(layout.hidden) * static_cast<double>(layout.intermediate);
}

// GB/s = 1e3 bytes/us; TFLOP/s = 1e6 flop/us.
double CostModel::raw_cpu(int64_t n) const {
  const FormatCosts& f = profile_.format(format_);
  const double mem =
      static_cast<double>(bytes_) / (profile_.dram_read_gbps * f.cpu_efficiency * 1e3);
  const double math = expert_flops(n) / (f.cpu_tflops * 1e6);
  return profile_.cpu_overhead_us + std::max(mem, math);
}

double CostModel::raw_gpu(int64_t n) const {
  const FormatCosts& f = profile_.format(format_);
  const double mem = static_cast<double>(bytes_) / (profile_.vram_gbps * 1e3);
  const double math = expert_flops(n) / (f.gpu_tflops * 1e6);
  return profile_.gpu_overhead_us + std::max(mem, math);
}

double CostModel::raw_copy(std::size_t bytes) const {
  return profile_.copy_latency_us + static_cast<double>(bytes) / (profile_.h2d_gbps * 1e3);
}

double CostModel::t_cpu(int64_t n) const {
  return raw_cpu(n) * scale_[0];
}
double CostModel::t_gpu(int64_t n) const {
  return raw_gpu(n) * scale_[1];
}
double CostModel::t_copy() const {
  return raw_copy(bytes_) * scale_[2];
}
double CostModel::t_copy_bytes(std::size_t bytes) const {
  return raw_copy(bytes) * scale_[2];
}

void CostModel::refine(Resource r, int64_t n_tokens, double observed_us, double alpha) {
  HM_CHECK(alpha > 0 && alpha <= 1, "refine: alpha must be in (0, 1], got ", alpha);
  HM_CHECK(observed_us > 0, "refine: observed time must be > 0 us, got ", observed_us);
  const int i = static_cast<int>(r);
  HM_CHECK(i >= 0 && i <= 2, "refine: unknown resource ", i);
  if (r != Resource::kCopy)
    HM_CHECK(n_tokens >= 1, "refine: n_tokens must be >= 1, got ", n_tokens);
  const double predicted = r == Resource::kCpu   ? raw_cpu(n_tokens)
                           : r == Resource::kGpu ? raw_gpu(n_tokens)
                                                 : raw_copy(bytes_);
  scale_[i] = (1.0 - alpha) * scale_[i] + alpha * observed_us / predicted;
}

}  // namespace hm
