// CPU expert kernels: expert byte layout, one MoE layer on raw host pointers, pool facts.
// Python (hybrid_moe.cpu_experts) validates tensors and passes data_ptr()s; C++ checks the rest.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/convert.h"
#include "bindings/registry.h"
#include "core/check.h"
#include "core/q8_rows16.h"
#include "core/weight_format.h"
#include "cpu/burst_read.h"
#include "cpu/dram_read.h"
#include "cpu/moe_cpu.h"
#include "cpu/pool_trace.h"
#include "cpu/thread_pool.h"

namespace py = pybind11;

namespace {

// Expert base addresses from a 1-D uint64 numpy array (read in place: the per-call cost of a
// decode step's 128-pointer list conversion is gone, CpuExpertStore.expert_ptr_array) or from
// any sequence of ints.
std::vector<const uint8_t*> expert_pointers(const py::object& ptrs) {
  std::vector<const uint8_t*> out;
  if (py::isinstance<py::array_t<uint64_t, py::array::c_style>>(ptrs)) {
    const auto a = ptrs.cast<py::array_t<uint64_t, py::array::c_style>>();
    HM_CHECK(a.ndim() == 1, "expert_ptrs must be 1-D, got ", a.ndim(), " dimensions");
    out.resize(a.size());
    for (py::ssize_t e = 0; e < a.size(); ++e)
      out[e] = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(a.data()[e]));
    return out;
  }
  std::vector<uintptr_t> v;
  try {
    v = ptrs.cast<std::vector<uintptr_t>>();
  } catch (const py::cast_error&) {
    throw py::type_error("expert_ptrs must be a 1-D uint64 numpy array or a sequence of ints");
  }
  out.reserve(v.size());
  for (uintptr_t p : v) out.push_back(reinterpret_cast<const uint8_t*>(p));
  return out;
}

}  // namespace

HM_BINDINGS(cpu) {
  m.def(
      "expert_layout",
      [](const std::string& fmt, int64_t hidden, int64_t intermediate) {
        return hm::bindings::layout_to_dict(
            hm::make_expert_layout(hm::parse_format(fmt), hidden, intermediate));
      },
      py::arg("fmt"), py::arg("hidden"), py::arg("intermediate"),
      "Byte layout of one expert (core/weight_format.h).");

  m.def(
      "cpu_moe_layer",
      [](const std::string& fmt, int64_t hidden, int64_t intermediate,
         const py::object& expert_ptrs, uintptr_t x_ptr, int64_t tokens,
         py::array_t<int32_t, py::array::c_style | py::array::forcecast> token_idx,
         py::array_t<int32_t, py::array::c_style | py::array::forcecast> expert_idx,
         py::array_t<float, py::array::c_style | py::array::forcecast> weights, uintptr_t out_ptr,
         int threads, const std::string& isa, const std::string& packing) {
        HM_CHECK(token_idx.size() == expert_idx.size() && token_idx.size() == weights.size(),
                 "token_idx, expert_idx and weights must have the same length, got ",
                 token_idx.size(), ", ", expert_idx.size(), ", ", weights.size());
        std::vector<hm::cpu::ExpertAssignment> as(token_idx.size());
        for (py::ssize_t i = 0; i < token_idx.size(); ++i)
          as[i] = {token_idx.data()[i], expert_idx.data()[i], weights.data()[i]};
        const std::vector<const uint8_t*> experts = expert_pointers(expert_ptrs);
        hm::cpu::MoeLayerArgs a;
        a.layout = hm::make_expert_layout(hm::parse_format(fmt), hidden, intermediate,
                                          hm::parse_packing(packing));
        a.experts = experts.data();
        a.n_experts = static_cast<int64_t>(experts.size());
        a.x = reinterpret_cast<const float*>(x_ptr);
        a.tokens = tokens;
        a.assignments = as.data();
        a.n_assignments = static_cast<int64_t>(as.size());
        a.out = reinterpret_cast<float*>(out_ptr);
        const hm::cpu::Isa chosen =
            isa.empty() ? hm::cpu::current_isa().isa : hm::cpu::parse_isa(isa);
        const hm::cpu::CallerPool cp = hm::cpu::caller_pool(threads);
        py::gil_scoped_release release;
        hm::cpu::run_moe_layer(*cp.pool, a, chosen, cp.caller_helps);
      },
      py::arg("fmt"), py::arg("hidden"), py::arg("intermediate"), py::arg("expert_ptrs"),
      py::arg("x_ptr"), py::arg("tokens"), py::arg("token_idx"), py::arg("expert_idx"),
      py::arg("weights"), py::arg("out_ptr"), py::arg("threads") = 0, py::arg("isa") = "",
      py::arg("packing") = "gguf",
      "out[t] += w * down(silu(gate(x_t)) * up(x_t)) for each assignment (raw host pointers; "
      "x, out: fp32 [tokens, hidden]). Blocks; releases the GIL; computes on `threads` threads: "
      "the caller and threads - 1 pool workers (cpu/thread_pool.h caller_pool).");

  m.def(
      "repack_experts",
      [](const std::string& fmt, int64_t hidden, int64_t intermediate, const std::string& from,
         const std::string& to, uintptr_t src_ptr, uintptr_t dst_ptr, int64_t n_experts) {
        const auto L = hm::make_expert_layout(hm::parse_format(fmt), hidden, intermediate,
                                              hm::parse_packing(from));
        const hm::RowPacking target = hm::parse_packing(to);
        HM_CHECK(n_experts >= 0, "n_experts must be >= 0, got ", n_experts);
        HM_CHECK(src_ptr != 0 && dst_ptr != 0, "null buffer");
        const auto* src = reinterpret_cast<const uint8_t*>(src_ptr);
        auto* dst = reinterpret_cast<uint8_t*>(dst_ptr);
        py::gil_scoped_release release;
        for (int64_t e = 0; e < n_experts; ++e)
          hm::repack_expert(L, target, src + e * L.stride, dst + e * L.stride);
      },
      py::arg("fmt"), py::arg("hidden"), py::arg("intermediate"), py::arg("from_packing"),
      py::arg("to_packing"), py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("n_experts"),
      "Converts n_experts consecutive experts (layout stride apart) from one row packing to "
      "another (core/q8_rows16.h); the buffers must not overlap.");

  m.def(
      "cpu_pool_info",
      [](int threads) {
        const hm::cpu::CallerPool cp = hm::cpu::caller_pool(threads);
        py::dict d;
        d["threads"] = cp.pool->size() + (cp.caller_helps ? 1 : 0);
        d["workers"] = cp.pool->size();
        d["caller_helps"] = cp.caller_helps;
        d["pinned"] = cp.pool->pinned();
        return d;
      },
      py::arg("threads") = 0,
      "How a blocking call on `threads` threads (cpu_moe_layer) computes: threads in all, pool "
      "workers, whether the caller computes beside them, whether the workers are pinned.");
  m.def("cpu_default_threads", &hm::cpu::default_threads);
  m.def("cpu_pool_tracing", &hm::cpu::set_pool_tracing, py::arg("on"),
        "Turns the per-item record of pool jobs on or off (cpu/pool_trace.h).");
  m.def(
      "cpu_last_pool_trace",
      [] {
        const hm::cpu::PoolTrace t = hm::cpu::last_pool_trace();
        const auto n = static_cast<py::ssize_t>(t.items.size());
        py::array_t<int64_t> items({n, static_cast<py::ssize_t>(6)});
        auto v = items.mutable_unchecked<2>();
        for (py::ssize_t i = 0; i < n; ++i) {
          const auto& it = t.items[i];
          v(i, 0) = it.worker;
          v(i, 1) = it.phase;
          v(i, 2) = it.item;
          v(i, 3) = it.take_ns;
          v(i, 4) = it.ready_ns;
          v(i, 5) = it.end_ns;
        }
        py::dict d;
        d["submit_ns"] = t.submit_ns;
        d["finish_ns"] = t.finish_ns;
        d["workers"] = t.workers;
        d["phase_items"] = t.phase_items;
        d["items"] = items;
        return d;
      },
      "The most recently finished traced job: submit_ns, finish_ns (CLOCK_MONOTONIC, as "
      "time.perf_counter_ns), workers, phase_items and items [n, 6] int64 rows of (worker, phase, "
      "item, take_ns, ready_ns, end_ns), worker -1 = a helping caller thread.");
  m.def(
      "cpu_host_row_packing",
      [](const std::string& fmt) {
        return std::string(hm::packing_name(hm::cpu::host_row_packing(hm::parse_format(fmt))));
      },
      py::arg("fmt"),
      "Row packing a runtime's host store uses for fmt on this machine (HYBRID_MOE_Q8_ROWS16).");
  m.def(
      "cpu_dram_read_gbps",
      [](int64_t mib, int threads, int reps) {
        HM_CHECK(mib >= 64, "mib must be >= 64, got ", mib);
        auto& pool = hm::cpu::shared_pool(threads);
        py::gil_scoped_release release;
        return hm::cpu::measure_dram_read_gbps(pool, static_cast<std::size_t>(mib) << 20, reps);
      },
      py::arg("mib") = 2048, py::arg("threads") = 0, py::arg("reps") = 5,
      "Host DRAM read bandwidth in GB/s: the shared pool's pinned workers stream `mib` MiB "
      "(median of reps; cpu/dram_read.h).");
  m.def(
      "cpu_dram_read_ranges",
      [](const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& sizes, int threads,
         int reps) {
        HM_CHECK(ptrs.size() == sizes.size(), "ptrs and sizes must have the same length, got ",
                 ptrs.size(), " and ", sizes.size());
        hm::cpu::PageRanges ranges;
        for (size_t i = 0; i < ptrs.size(); ++i) {
          HM_CHECK(ptrs[i] != 0 && sizes[i] > 0, "range ", i, ": null pointer or size <= 0");
          ranges.emplace_back(reinterpret_cast<const void*>(ptrs[i]),
                              static_cast<std::size_t>(sizes[i]));
        }
        auto& pool = hm::cpu::shared_pool(threads);
        hm::cpu::DramRead r;
        std::size_t huge = 0;
        {
          py::gil_scoped_release release;
          r = hm::cpu::measure_dram_read_ranges(pool, ranges, reps);
          huge = hm::cpu::huge_page_bytes(ranges);
        }
        py::dict methods;
        for (const auto& mt : r.methods) methods[py::str(mt.name)] = mt.gbps;
        py::dict d;
        d["best_gbps"] = r.best_gbps;
        d["best"] = r.best;
        d["methods"] = methods;
        d["huge_page_bytes"] = huge;
        return d;
      },
      py::arg("ptrs"), py::arg("sizes"), py::arg("threads") = 0, py::arg("reps") = 5,
      "The DRAM reader's loops over caller-owned host ranges (addresses and byte sizes, e.g. "
      "expert stores; >= 64 MiB in all): best GB/s, its method, every method's GB/s and the "
      "ranges' bytes on transparent huge pages (cpu/dram_read.h).");
  m.def(
      "cpu_burst_read",
      [](int64_t burst_bytes, int64_t item_bytes, int bursts, int threads, int64_t buffer_mib) {
        HM_CHECK(burst_bytes > 0 && item_bytes > 0 && buffer_mib > 0,
                 "burst_bytes, item_bytes and buffer_mib must be positive");
        const hm::cpu::CallerPool cp = hm::cpu::caller_pool(threads);
        hm::cpu::BurstRead r;
        {
          py::gil_scoped_release release;
          r = hm::cpu::measure_burst_read(cp, static_cast<std::size_t>(burst_bytes),
                                          static_cast<std::size_t>(item_bytes), bursts,
                                          static_cast<std::size_t>(buffer_mib) << 20);
        }
        py::dict d;
        d["median_us"] = r.median_us;
        d["p10_us"] = r.p10_us;
        d["p90_us"] = r.p90_us;
        d["gbps"] = r.gbps;
        d["items"] = r.items;
        d["workers"] = cp.pool->size();
        d["caller_helps"] = cp.caller_helps;
        return d;
      },
      py::arg("burst_bytes"), py::arg("item_bytes") = 65536, py::arg("bursts") = 200,
      py::arg("threads") = 0, py::arg("buffer_mib") = 2048,
      "Cold reads of burst_bytes per blocking call on `threads` computing threads (the expert "
      "kernel's pool): median / p10 / p90 us per call and GB/s (cpu/burst_read.h).");
}
