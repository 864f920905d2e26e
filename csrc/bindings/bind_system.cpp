// Build and machine facts: version, CPU ISA choice, thread count, CUDA devices.
#include <pybind11/stl.h>

#include "bindings/registry.h"
#include "cpu/isa.h"
#if HYBRID_MOE_WITH_CUDA
#include "cuda/device_info.h"
#endif

namespace py = pybind11;

namespace {

py::dict isa_dict(const hm::cpu::IsaChoice& c) {
  py::dict d;
  d["isa"] = hm::cpu::isa_name(c.isa);
  d["reason"] = c.reason;
  return d;
}

}  // namespace

HM_BINDINGS(system) {
  m.attr("__version__") = HYBRID_MOE_VERSION;
#if HYBRID_MOE_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
#if HYBRID_MOE_HAVE_AVX2
  m.attr("avx2_built") = true;
#else
  m.attr("avx2_built") = false;
#endif
#if HYBRID_MOE_HAVE_AVX512
  m.attr("avx512_built") = true;
#else
  m.attr("avx512_built") = false;
#endif
#if HYBRID_MOE_HAVE_AMX
  m.attr("amx_built") = true;
#else
  m.attr("amx_built") = false;
#endif

  m.def("cpu_features", [] {
    const auto& f = hm::cpu::cpu_features();
    py::dict d;
    d["vendor"] = f.vendor;
    d["brand"] = f.brand;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["os_avx"] = f.os_avx;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq;
    d["avx512_bf16"] = f.avx512_bf16;
    d["avx512_vnni"] = f.avx512_vnni;
    d["avx512_fp16"] = f.avx512_fp16;
    d["amx_tile"] = f.amx_tile;
    d["amx_bf16"] = f.amx_bf16;
    d["amx_int8"] = f.amx_int8;
    d["os_avx512"] = f.os_avx512;
    d["os_amx"] = f.os_amx;
    return d;
  });
  m.def(
      "cpu_isa", [] { return isa_dict(hm::cpu::current_isa()); },
      "The CPU kernel variant in use and why: {'isa': name, 'reason': text}.");
  m.def(
      "set_cpu_isa", [](const std::string& name) { return isa_dict(hm::cpu::set_isa(name)); },
      py::arg("name"),
      "Cap the CPU kernel variant: 'generic', 'avx2', 'avx512', 'amx' or 'auto'. Raises "
      "ValueError for an unknown name or one this machine cannot run.");
  m.def(
      "runnable_cpu_isas",
      [] {
        py::list out;
        out.append("generic");
        if (hm::cpu::avx2_usable()) out.append("avx2");
        if (hm::cpu::avx512_usable()) out.append("avx512");
        if (hm::cpu::amx_usable()) out.append("amx");  // asks Linux for tile permission once
        return out;
      },
      "The CPU kernel variants this machine, its OS and this build can run, in ascending order.");
  m.def("physical_cores", &hm::cpu::physical_cores,
        "Physical cores this process may run on (the default thread count).");

  m.def(
      "cuda_device_count",
      [] {
#if HYBRID_MOE_WITH_CUDA
        std::string why;
        const int n = hm::cuda::device_count(&why);
        return py::make_tuple(n, why);
#else
        return py::make_tuple(0, std::string("hybrid_moe was built without CUDA"));
#endif
      },
      "(number of CUDA devices, why none) as seen by the native code.");
  m.def("cuda_devices", [] {
    py::list out;
#if HYBRID_MOE_WITH_CUDA
    for (const auto& d : hm::cuda::devices()) {
      py::dict e;
      e["index"] = d.index;
      e["name"] = d.name;
      e["total_memory"] = d.total_memory;
      e["free_memory"] = d.free_memory;
      e["capability"] = py::make_tuple(d.major, d.minor);
      e["multiprocessors"] = d.multiprocessors;
      out.append(e);
    }
#endif
    return out;
  });
  m.def(
      "cuda_versions",
      [] {
#if HYBRID_MOE_WITH_CUDA
        return py::make_tuple(hm::cuda::runtime_version(), hm::cuda::driver_version());
#else
        return py::make_tuple(0, 0);
#endif
      },
      "(CUDA runtime version built in, driver version or 0).");
}
