// Conversions shared by several bindings files (no logic: dict <-> struct).
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "core/check.h"
#include "core/cost_model.h"
#include "core/policy.h"
#include "core/weight_format.h"

namespace hm::bindings {

// Flat profile dict (hybrid_moe.cost_model.to_native) -> HardwareProfile; ValueError names a
// missing key; HardwareProfile::validate() checks the values.
inline HardwareProfile profile_from_dict(const pybind11::dict& d) {
  auto get = [&](const char* key) {
    HM_CHECK(d.contains(key), "profile is missing the key '", key, "'");
    return d[key].cast<double>();
  };
  HardwareProfile p;
  p.name = d.contains("name") ? d["name"].cast<std::string>() : "unnamed";
  p.dram_read_gbps = get("dram_read_gbps");
  p.cpu_overhead_us = get("cpu_overhead_us");
  p.vram_gbps = get("vram_gbps");
  p.gpu_overhead_us = get("gpu_overhead_us");
  p.gpu_layer_overhead_us = get("gpu_layer_overhead_us");
  p.h2d_gbps = get("h2d_gbps");
  p.copy_latency_us = get("copy_latency_us");
  p.layer_fixed_us = get("layer_fixed_us");
  p.decode_gpu_layer_us = get("decode_gpu_layer_us");
  p.copy_stall_fraction = get("copy_stall_fraction");
  p.bf16 = {get("bf16_cpu_efficiency"), get("bf16_cpu_tflops"), get("bf16_gpu_tflops")};
  p.q8_0 = {get("q8_0_cpu_efficiency"), get("q8_0_cpu_tflops"), get("q8_0_gpu_tflops")};
  p.validate();
  return p;
}

// {name: number} -> ValueParams (keys as the struct's fields; absent keys keep the defaults). An
// unknown key or an out-of-range value is a ValueError now, not when a policy is built later.
inline ValueParams value_params_from_dict(const pybind11::dict& d) {
  // The numeric fields by name; stall_aware, the one flag, is handled beside them.
  static const std::pair<const char*, double ValueParams::*> kNumbers[] = {
      {"halflife_steps", &ValueParams::halflife_steps},
      {"horizon_steps", &ValueParams::horizon_steps},
      {"weight_mix", &ValueParams::weight_mix},
      {"copy_factor", &ValueParams::copy_factor},
      {"horizon_lifetimes", &ValueParams::horizon_lifetimes},
      {"stall_weight", &ValueParams::stall_weight},
  };
  ValueParams vp;
  for (const auto& item : d) {
    const auto key = item.first.cast<std::string>();
    if (key == "stall_aware") {
      vp.stall_aware = item.second.cast<bool>();
      continue;
    }
    bool known = false;
    for (const auto& [name, field] : kNumbers)
      if (key == name) {
        vp.*field = item.second.cast<double>();
        known = true;
      }
    HM_CHECK(known, "unknown value-policy parameter '", key,
             "': expected halflife_steps, horizon_steps, weight_mix, copy_factor, "
             "horizon_lifetimes, stall_aware or stall_weight");
  }
  make_policy("value", vp);  // range checks (the policy's constructor)
  return vp;
}

// ExpertLayout -> {format, hidden, intermediate, *_offset, *_bytes, stride, weight_bytes}.
inline pybind11::dict layout_to_dict(const ExpertLayout& l) {
  pybind11::dict d;
  d["format"] = format_name(l.format);
  d["hidden"] = l.hidden;
  d["intermediate"] = l.intermediate;
  d["gate_offset"] = l.gate_offset;
  d["up_offset"] = l.up_offset;
  d["down_offset"] = l.down_offset;
  d["gate_bytes"] = l.gate_bytes;
  d["up_bytes"] = l.up_bytes;
  d["down_bytes"] = l.down_bytes;
  d["stride"] = l.stride;
  d["weight_bytes"] = l.weight_bytes();
  return d;
}

}  // namespace hm::bindings
