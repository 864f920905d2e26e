// [NOTE] Cost model (DESIGN.md section 4): predicted times, in microseconds, of the three resources
// the scheduler balances for one expert of one layer:
//   t_cpu(n)    CPU computes the expert for n tokens, reading its weights from DRAM:
//               cpu_overhead + max(bytes / (dram_bw * cpu_efficiency), flops(n) / cpu_flops)
//   t_gpu(n)    GPU computes it from a VRAM slot: gpu_overhead + max(bytes / vram_bw, flops /
//   gpu_flops) t_copy()    pinned host-to-device copy of the expert's one contiguous byte range:
//               copy_latency + bytes / h2d_bw
// flops(n) = 2 * (3 * hidden * intermediate) * n (gate, up, down). Each curve is "latency + bytes /
// bandwidth, becoming FLOP-bound at large n". Constants come from a hardware profile (JSON, parsed
// in Python: python/hybrid_moe/profiles/README.md documents the schema) and are refined at run time
// from observed times: refine_*() keeps an exponential moving average of observed / predicted per
// resource and scales predictions by it.
#pragma once

#include <cstdint>
#include <string>

#include "core/weight_format.h"

namespace hm {

// Per weight format constants of one machine (units in the field names).
struct FormatCosts {
  double cpu_efficiency = 0.5;  // fraction of dram_read_gbps the CPU expert kernel reaches (0, 1]
  double cpu_tflops = 1.0;      // CPU expert kernel throughput at large n, TFLOP/s
  double gpu_tflops = 100.0;    // GPU expert kernel throughput at large n, TFLOP/s
};

// A hardware profile: what python/hybrid_moe/profiles/*.json hold.
struct HardwareProfile {
  std::string name;
  double dram_read_gbps = 60.0;        // host DRAM read bandwidth with all CPU threads, GB/s (1e9)
  double cpu_overhead_us = 5.0;        // per expert CPU dispatch (thread pool fan-out and join)
  double vram_gbps = 1000.0;           // device memory bandwidth the expert kernel reaches, GB/s
  double gpu_overhead_us = 2.0;        // per expert GPU cost inside the one per-layer launch
  double gpu_layer_overhead_us = 8.0;  // per layer with any GPU expert work: launch + plan read
  double h2d_gbps = 25.0;              // pinned host-to-device copy bandwidth, GB/s
  double copy_latency_us = 10.0;       // fixed cost of one copy (the floor of a tiny copy)
  double layer_fixed_us = 50.0;  // per layer, per decode step, outside the experts: attention,
                                 // router, ids D2H, plan and join host functions
  // The live decode path (measured from the runtime's timeline, not by calibrate's kernel runs):
  double decode_gpu_layer_us = 0.0;  // per decode layer with GPU experts: the hand-off to the
                                     // GPU path (doorbells, plan and partials over PCIe) beyond
                                     // gpu_layer_overhead_us
  double copy_stall_fraction = 0.0;  // share of each expert copy's time a decode step cannot
                                     // overlap (the copy fills PCIe and DRAM the step needs)
  FormatCosts bf16;
  FormatCosts q8_0;

  const FormatCosts& format(WeightFormat f) const { return f == WeightFormat::kBF16 ? bf16 : q8_0; }
  void validate() const;  // HM_CHECK: every constant positive and efficiency in (0, 1]
};

// Which observation refine() learns from.
enum class Resource : int { kCpu = 0, kGpu = 1, kCopy = 2 };

class CostModel {
 public:
  // `layout` gives the expert's bytes (weight_bytes) and shape (flops).
  CostModel(const HardwareProfile& profile, const ExpertLayout& layout);

  double t_cpu(int64_t n_tokens) const;  // us
  double t_gpu(int64_t n_tokens) const;  // us, excluding gpu_layer_overhead_us
  double t_copy() const;                 // us, one expert
  double t_copy_bytes(std::size_t bytes) const;
  double gpu_layer_overhead() const { return profile_.gpu_layer_overhead_us * scale_[1]; }
  double layer_fixed() const { return profile_.layer_fixed_us; }
  double decode_gpu_layer() const { return profile_.decode_gpu_layer_us; }
  // Critical-path time one expert copy costs a decode step: copy_stall_fraction * t_copy().
  double t_copy_stall() const { return profile_.copy_stall_fraction * t_copy(); }
  // Saved time per decode use when the expert is a cache hit: t_cpu(1) - t_gpu(1).
  double saved_per_use() const { return t_cpu(1) - t_gpu(1); }

  // Learn from one observed time of `resource` for n tokens (n ignored for kCopy): the scale
  // factor becomes (1 - alpha) * scale + alpha * observed / unscaled prediction. alpha in (0, 1].
  void refine(Resource resource, int64_t n_tokens, double observed_us, double alpha = 0.1);
  double scale(Resource r) const { return scale_[static_cast<int>(r)]; }

  std::size_t expert_bytes() const { return bytes_; }
  double expert_flops(int64_t n_tokens) const {
    return flops_per_token_ * static_cast<double>(n_tokens);
  }
  const HardwareProfile& profile() const { return profile_; }
  WeightFormat format() const { return format_; }

 private:
  double raw_cpu(int64_t n) const;
  double raw_gpu(int64_t n) const;
  double raw_copy(std::size_t bytes) const;

  HardwareProfile profile_;
  WeightFormat format_;
  std::size_t bytes_;
  double flops_per_token_;
  double scale_[3] = {1.0, 1.0, 1.0};
};

}  // namespace hm
