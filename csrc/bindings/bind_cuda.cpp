// GPU side (issue 5): pinned expert store, device slab, mover, decode/prefill/add kernels.
// Compiled always; without CUDA every entry raises RuntimeError "hybrid_moe was built without
// CUDA". Tensors come in as data_ptr() integers and the stream as an integer (cudaStream_t);
// python/hybrid_moe/gpu.py validates tensors before calling.
#include <pybind11/stl.h>

#include "bindings/convert.h"
#include "bindings/registry.h"
#include "core/check.h"
#include "core/weight_format.h"
#if HYBRID_MOE_WITH_CUDA
#include "cuda/device_slab.h"
#include "cuda/expert_kernels.h"
#include "cuda/mover.h"
#include "cuda/pinned_store.h"
#include "cuda/q8_rows16_unpack.h"
#endif

namespace py = pybind11;

namespace {

#if HYBRID_MOE_WITH_CUDA
using hm::cuda::DeviceSlab;
using hm::cuda::Mover;
using hm::cuda::PinnedExpertStore;

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

hm::cuda::OutDtype parse_out(const std::string& s) {
  if (s == "float32") return hm::cuda::OutDtype::kFloat32;
  if (s == "bfloat16") return hm::cuda::OutDtype::kBFloat16;
  HM_CHECK(false, "out dtype must be 'float32' or 'bfloat16', got '", s, "'");
}

hm::cuda::SlabView view(const DeviceSlab& s) {
  hm::cuda::SlabView v;
  v.base = s.base();
  v.n_slots = s.n_slots();
  v.layout = s.layout();
  return v;
}
#endif

}  // namespace

HM_BINDINGS(cuda) {
  m.def(
      "gpu_expert_layout",
      [](const std::string& fmt, int64_t hidden, int64_t intermediate) {
        return hm::bindings::layout_to_dict(
            hm::make_expert_layout(hm::parse_format(fmt), hidden, intermediate));
      },
      py::arg("format"), py::arg("hidden"), py::arg("intermediate"),
      "Byte layout of one expert (core/weight_format.h) as a dict.");
#if HYBRID_MOE_WITH_CUDA
  m.attr("gpu_built") = true;
  py::class_<PinnedExpertStore, std::shared_ptr<PinnedExpertStore>>(m, "GpuPinnedStore")
      .def(py::init([](const std::string& fmt, int64_t h, int64_t i, int64_t n) {
             return std::make_shared<PinnedExpertStore>(
                 hm::make_expert_layout(hm::parse_format(fmt), h, i), n);
           }),
           py::arg("format"), py::arg("hidden"), py::arg("intermediate"), py::arg("n_experts"))
      .def_property_readonly("n_experts", &PinnedExpertStore::n_experts)
      .def_property_readonly("stride", &PinnedExpertStore::stride)
      .def_property_readonly("nbytes", &PinnedExpertStore::nbytes)
      .def_property_readonly(
          "layout",
          [](const PinnedExpertStore& s) { return hm::bindings::layout_to_dict(s.layout()); })
      .def_property_readonly(
          "data_ptr", [](PinnedExpertStore& s) { return reinterpret_cast<uintptr_t>(s.data()); })
      .def("expert_ptr", [](PinnedExpertStore& s,
                            int64_t e) { return reinterpret_cast<uintptr_t>(s.expert_ptr(e)); })
      .def(
          "fill_expert",
          [](PinnedExpertStore& s, int64_t e, uintptr_t src, std::size_t nbytes, std::size_t off) {
            py::gil_scoped_release nogil;
            s.fill_expert(e, ptr<const void>(src), nbytes, off);
          },
          py::arg("expert"), py::arg("src_ptr"), py::arg("nbytes"), py::arg("offset") = 0)
      .def(
          "load_file",
          [](PinnedExpertStore& s, const std::string& path, std::size_t off, int64_t first,
             int64_t count) {
            py::gil_scoped_release nogil;
            s.load_file(path, off, first, count);
          },
          py::arg("path"), py::arg("file_offset"), py::arg("first"), py::arg("count"));

  py::class_<DeviceSlab, std::shared_ptr<DeviceSlab>>(m, "GpuDeviceSlab")
      .def(py::init([](const std::string& fmt, int64_t h, int64_t i, int n_slots, int device) {
             return std::make_shared<DeviceSlab>(
                 hm::make_expert_layout(hm::parse_format(fmt), h, i), n_slots, device);
           }),
           py::arg("format"), py::arg("hidden"), py::arg("intermediate"), py::arg("n_slots"),
           py::arg("device") = 0)
      .def_static("slots_for_budget",
                  [](const std::string& fmt, int64_t h, int64_t i, std::size_t budget) {
                    return DeviceSlab::slots_for_budget(
                        hm::make_expert_layout(hm::parse_format(fmt), h, i), budget);
                  })
      .def_static("slots_for_fraction", &DeviceSlab::slots_for_fraction)
      .def_property_readonly("n_slots", &DeviceSlab::n_slots)
      .def_property_readonly("device", &DeviceSlab::device)
      .def_property_readonly("stride", &DeviceSlab::stride)
      .def_property_readonly("nbytes", &DeviceSlab::nbytes)
      .def_property_readonly(
          "layout", [](const DeviceSlab& s) { return hm::bindings::layout_to_dict(s.layout()); })
      .def_property_readonly(
          "base_ptr", [](const DeviceSlab& s) { return reinterpret_cast<uintptr_t>(s.base()); })
      .def("slot_ptr",
           [](const DeviceSlab& s, int i) { return reinterpret_cast<uintptr_t>(s.slot_ptr(i)); })
      .def(
          "read_slot",
          [](const DeviceSlab& s, int i, uintptr_t dst) {
            py::gil_scoped_release nogil;
            s.read_slot(i, ptr<void>(dst));
          },
          py::arg("slot"), py::arg("dst_ptr"));

  py::class_<Mover, std::shared_ptr<Mover>>(m, "GpuMover")
      .def(py::init([](std::shared_ptr<PinnedExpertStore> store, std::shared_ptr<DeviceSlab> slab,
                       int max_in_flight, int max_pending_prefetch) {
             return std::make_shared<Mover>(store, slab, max_in_flight, max_pending_prefetch);
           }),
           py::arg("store"), py::arg("slab"), py::arg("max_in_flight") = 4,
           py::arg("max_pending_prefetch") = 64)
      .def(
          "request_fetch",
          [](Mover& mv, int64_t expert, int slot, bool prefetch, uint64_t generation) {
            mv.request_fetch({expert, slot, prefetch, generation});
          },
          py::arg("expert"), py::arg("slot"), py::arg("prefetch") = false,
          py::arg("generation") = 0)
      .def("set_generation", &Mover::set_generation)
      .def("poll_completions",
           [](Mover& mv) {
             py::list out;
             for (const auto& c : mv.poll_completions())
               out.append(py::make_tuple(
                   c.expert, c.slot,
                   c.status == hm::cuda::FetchStatus::kReady ? "ready" : "dropped", c.generation));
             return out;
           })
      .def(
          "acquire",
          [](Mover& mv, uint64_t plan_id, const std::vector<int>& slots,
             const std::vector<int64_t>& experts) {
            HM_CHECK(slots.size() == experts.size(),
                     "acquire: slots and experts must have the same length, got ", slots.size(),
                     " and ", experts.size());
            return mv.acquire(plan_id, slots.data(), experts.data(),
                              static_cast<int>(slots.size()));
          },
          py::arg("plan_id"), py::arg("slots"), py::arg("experts"))
      .def("release", &Mover::release, py::arg("plan_id"))
      .def("residency", &Mover::residency)
      .def("resident_expert", &Mover::resident_expert)
      .def("slot_refs", &Mover::slot_refs)
      .def("idle", &Mover::idle)
      .def("wait_idle", &Mover::wait_idle, py::call_guard<py::gil_scoped_release>())
      .def("stats", [](const Mover& mv) {
        const auto s = mv.stats();
        py::dict d;
        d["copies_done"] = s.copies_done;
        d["already_resident"] = s.already_resident;
        d["dropped_stale"] = s.dropped_stale;
        d["dropped_overflow"] = s.dropped_overflow;
        d["superseded"] = s.superseded;
        d["waits_for_release"] = s.waits_for_release;
        d["bytes_copied"] = s.bytes_copied;
        return d;
      });

  m.def(
      "gpu_decode",
      [](const DeviceSlab& slab, uintptr_t token_ptr, uintptr_t pair_token, uintptr_t pair_slot,
         uintptr_t pair_weight, int n_tokens, int max_pairs, uintptr_t x, uintptr_t h,
         uintptr_t out, const std::string& out_dtype, uintptr_t stream) {
        hm::cuda::DevicePlan p;
        p.token_ptr = ptr<const int32_t>(token_ptr);
        p.pair_token = ptr<const int32_t>(pair_token);
        p.pair_slot = ptr<const int32_t>(pair_slot);
        p.pair_weight = ptr<const float>(pair_weight);
        p.n_tokens = n_tokens;
        p.max_pairs = max_pairs;
        const auto od = parse_out(out_dtype);
        py::gil_scoped_release nogil;
        hm::cuda::launch_decode(view(slab), p, ptr<const void>(x), ptr<float>(h), ptr<void>(out),
                                od, ptr<CUstream_st>(stream));
      },
      py::arg("slab"), py::arg("token_ptr"), py::arg("pair_token"), py::arg("pair_slot"),
      py::arg("pair_weight"), py::arg("n_tokens"), py::arg("max_pairs"), py::arg("x"), py::arg("h"),
      py::arg("out"), py::arg("out_dtype"), py::arg("stream"));
  m.def(
      "gpu_add_partials",
      [](uintptr_t out, const std::string& out_dtype, uintptr_t partial, int64_t n,
         uintptr_t stream) {
        const auto od = parse_out(out_dtype);
        py::gil_scoped_release nogil;
        hm::cuda::launch_add_partials(ptr<void>(out), od, ptr<const float>(partial), n,
                                      ptr<CUstream_st>(stream));
      },
      py::arg("out"), py::arg("out_dtype"), py::arg("partial"), py::arg("n"), py::arg("stream"));
  m.def(
      "gpu_q8_rows16_to_gguf",
      [](uintptr_t src, uintptr_t dst, int64_t hidden, int64_t intermediate, uintptr_t stream) {
        const auto L = hm::make_expert_layout(hm::WeightFormat::kQ8_0, hidden, intermediate,
                                              hm::RowPacking::kQ8Rows16);
        py::gil_scoped_release nogil;
        hm::cuda::q8_rows16_to_gguf_async(ptr<const uint8_t>(src), ptr<uint8_t>(dst), L,
                                          ptr<CUstream_st>(stream));
      },
      py::arg("src"), py::arg("dst"), py::arg("hidden"), py::arg("intermediate"), py::arg("stream"),
      "One Q8_0 expert in q8_rows16 packing (device bytes at src) -> GGUF rows at dst, on stream "
      "(what the mover runs after each copy of a q8_rows16 store; for tests and timing).");
  py::class_<hm::cuda::PrefillRunner, std::shared_ptr<hm::cuda::PrefillRunner>>(m,
                                                                                "GpuPrefillRunner")
      .def(py::init<>())
      .def(
          "run",
          [](hm::cuda::PrefillRunner& r, const DeviceSlab& slab, py::buffer tokens,
             py::buffer slots, py::buffer weights, int n_tokens, uintptr_t x, uintptr_t out,
             const std::string& out_dtype, uintptr_t stream) {
            const py::buffer_info bt = tokens.request(), bs = slots.request(),
                                  bw = weights.request();
            HM_CHECK(bt.format == py::format_descriptor<int32_t>::format() &&
                         bs.format == py::format_descriptor<int32_t>::format() &&
                         bw.format == py::format_descriptor<float>::format(),
                     "tokens and slots must be int32 and weights float32 buffers");
            HM_CHECK(bt.ndim == 1 && bs.ndim == 1 && bw.ndim == 1 && bt.size == bs.size &&
                         bt.size == bw.size,
                     "tokens, slots, weights must be 1-D of one length");
            const auto od = parse_out(out_dtype);
            py::gil_scoped_release nogil;
            r.run(view(slab), static_cast<const int32_t*>(bt.ptr),
                  static_cast<const int32_t*>(bs.ptr), static_cast<const float*>(bw.ptr),
                  static_cast<int>(bt.size), n_tokens, ptr<const void>(x), ptr<void>(out), od,
                  ptr<CUstream_st>(stream));
          },
          py::arg("slab"), py::arg("tokens"), py::arg("slots"), py::arg("weights"),
          py::arg("n_tokens"), py::arg("x"), py::arg("out"), py::arg("out_dtype"),
          py::arg("stream"));
#else
  m.attr("gpu_built") = false;
  auto unavailable = [](py::args, py::kwargs) -> py::object {
    throw hm::RuntimeError(
        "hybrid_moe was built without CUDA: the GPU side (pinned store, slab, mover, kernels) is "
        "unavailable. Rebuild with nvcc on PATH (HYBRID_MOE_CUDA=ON).");
  };
  for (const char* name : {"GpuPinnedStore", "GpuDeviceSlab", "GpuMover", "GpuPrefillRunner",
                           "gpu_decode", "gpu_add_partials", "gpu_q8_rows16_to_gguf"})
    m.def(name, unavailable);
#endif
}
