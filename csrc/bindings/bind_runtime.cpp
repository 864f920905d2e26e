// The live runtime (issue 6): hm::runtime::Runtime as hybrid_moe._C.Runtime. Tensors arrive as
// data_ptr() integers and the stream as an integer; python/hybrid_moe/runtime.py and layer.py
// validate them first. The GIL is released around forwards (host functions never need it).
#include <pybind11/stl.h>

#include "bindings/convert.h"
#include "bindings/registry.h"
#include "core/check.h"
#include "runtime/runtime.h"

namespace py = pybind11;
using hm::runtime::LayerStats;
using hm::runtime::Runtime;
using hm::runtime::RuntimeOptions;

namespace {

py::dict stats_dict(const LayerStats& s) {
  py::dict d;
  d["forwards"] = s.forwards;
  d["tokens"] = s.tokens;
  d["pairs"] = s.pairs;
  d["cpu_pairs"] = s.cpu_pairs;
  d["gpu_pairs"] = s.gpu_pairs;
  d["experts"] = s.experts;
  d["cpu_experts"] = s.cpu_experts;
  d["gpu_experts"] = s.gpu_experts;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["in_flight"] = s.in_flight;
  d["demand_copies"] = s.demand_copies;
  d["prefetch_copies"] = s.prefetch_copies;
  d["admit_copies"] = s.admit_copies;
  d["copy_bytes"] = s.copy_bytes;
  d["decode_fetch_on_cpu"] = s.decode_fetch_on_cpu;
  d["cpu_us"] = s.cpu_us;
  d["gpu_us"] = s.gpu_us;
  d["cpu_timed"] = s.cpu_timed;
  d["gpu_timed"] = s.gpu_timed;
  return d;
}

// The options reconfigure() may change (shared by the constructor and reconfigure).
void set_engine_options(RuntimeOptions& o, const py::dict& profile, const std::string& policy,
                        double budget_fraction, int64_t budget_bytes, int64_t budget_slots,
                        double hint_probability, std::vector<double> frequency,
                        const py::dict& value_params) {
  o.profile = hm::bindings::profile_from_dict(profile);
  o.policy = policy;
  o.budget_fraction = budget_fraction;
  o.budget_bytes = budget_bytes;
  o.budget_slots = budget_slots;
  o.hint_probability = hint_probability;
  o.frequency = std::move(frequency);
  o.value = hm::bindings::value_params_from_dict(value_params);
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

HM_BINDINGS(runtime) {
  py::class_<Runtime>(m, "Runtime",
                      "Live runtime (csrc/runtime/runtime.h); use hybrid_moe.Runtime.")
      .def(py::init([](const py::dict& profile, const std::string& policy, int threads, int device,
                       double budget_fraction, int64_t budget_bytes, int64_t budget_slots,
                       int n_layers, int decode_max_tokens, double hint_probability,
                       std::vector<double> frequency, const py::dict& value_params) {
             RuntimeOptions o;
             set_engine_options(o, profile, policy, budget_fraction, budget_bytes, budget_slots,
                                hint_probability, std::move(frequency), value_params);
             o.threads = threads;
             o.device = device;
             o.n_layers = n_layers;
             o.decode_max_tokens = decode_max_tokens;
             return std::make_unique<Runtime>(o);
           }),
           py::arg("profile"), py::arg("policy"), py::arg("threads"), py::arg("device"),
           py::arg("budget_fraction"), py::arg("budget_bytes"), py::arg("budget_slots"),
           py::arg("n_layers"), py::arg("decode_max_tokens"), py::arg("hint_probability"),
           py::arg("frequency"), py::arg("value_params"))
      .def(
          "register_layer",
          [](Runtime& r, int layer, const std::string& fmt, int64_t hidden, int64_t inter,
             int n_expert, int top_k, uintptr_t packed) {
            py::gil_scoped_release nogil;
            r.register_layer(layer, hm::parse_format(fmt), hidden, inter, n_expert, top_k,
                             ptr<const uint8_t>(packed));
          },
          "packed: uint8 [n_expert, stride] data_ptr in the expert layout")
      .def("start",
           [](Runtime& r) {
             py::gil_scoped_release nogil;
             r.start();
           })
      .def("forward_cpu",
           [](Runtime& r, int layer, int64_t T, uintptr_t x, uintptr_t ids, uintptr_t w,
              uintptr_t hints, int n_hints, uintptr_t out) {
             py::gil_scoped_release nogil;
             r.forward_cpu(layer, T, ptr<const float>(x), ptr<const int32_t>(ids),
                           ptr<const float>(w), ptr<const int32_t>(hints), n_hints,
                           ptr<float>(out));
           })
      .def("forward_cuda",
           [](Runtime& r, int layer, int64_t T, uintptr_t x, uintptr_t ids, uintptr_t w,
              uintptr_t hints, int n_hints, int hint_kind, uintptr_t out, bool out_bf16,
              uintptr_t stream) {
             py::gil_scoped_release nogil;
             r.forward_cuda(layer, T, ptr<const void>(x), ptr<const int32_t>(ids),
                            ptr<const float>(w), ptr<const void>(hints), n_hints, hint_kind,
                            ptr<void>(out), out_bf16, ptr<void>(stream));
           })
      .def(
          "reconfigure",
          [](Runtime& r, const py::dict& profile, const std::string& policy, double budget_fraction,
             int64_t budget_bytes, int64_t budget_slots, double hint_probability,
             std::vector<double> frequency, const py::dict& value_params) {
            RuntimeOptions o = r.options();
            set_engine_options(o, profile, policy, budget_fraction, budget_bytes, budget_slots,
                               hint_probability, std::move(frequency), value_params);
            py::gil_scoped_release nogil;
            r.reconfigure(o);
          },
          py::arg("profile"), py::arg("policy"), py::arg("budget_fraction"),
          py::arg("budget_bytes"), py::arg("budget_slots"), py::arg("hint_probability"),
          py::arg("frequency"), py::arg("value_params"))
      .def("enable_timeline", &Runtime::enable_timeline, py::arg("capacity"),
           "Record up to `capacity` decode-path events from now on (0: off); see timeline.h")
      .def(
          "timeline",
          [](const Runtime& r) {
            py::list out;
            for (const auto& e : r.timeline_events())
              out.append(py::make_tuple(e.t_us, e.layer, e.kind, e.a, e.b));
            return out;
          },
          "[(t_us, layer, kind, a, b)] recorded so far (kinds: TimelineKind in timeline.h)")
      .def("timeline_dropped", &Runtime::timeline_dropped)
      .def("settle", &Runtime::settle, py::call_guard<py::gil_scoped_release>())
      .def("check_error", &Runtime::check_error)
      .def("wait_copies", &Runtime::wait_copies, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("started", &Runtime::started)
      .def_property_readonly("has_gpu", &Runtime::has_gpu)
      .def_property_readonly("decode_sync", &Runtime::decode_sync)
      .def_property_readonly("host_store", &Runtime::host_store,
                             "The host expert store's backing and its share on huge pages "
                             "(measured at start; empty before).")
      .def_property_readonly(
          "host_packing",
          [](const Runtime& r) { return std::string(hm::packing_name(r.layout().packing)); },
          "Row packing of the host expert store: gguf or q8_rows16 (HYBRID_MOE_Q8_ROWS16).")
      .def_property_readonly("device", &Runtime::device)
      .def_property_readonly("n_layers", &Runtime::n_layers)
      .def_property_readonly("n_expert", &Runtime::n_expert)
      .def_property_readonly("top_k", &Runtime::top_k)
      .def_property_readonly("n_slots", &Runtime::n_slots)
      .def_property_readonly("decode_max_tokens", &Runtime::decode_max_tokens)
      .def_property_readonly("policy", &Runtime::policy_name)
      .def("layer_registered", &Runtime::layer_registered)
      .def("layer_stats",
           [](const Runtime& r) {
             py::list out;
             for (const LayerStats& s : r.layer_stats()) out.append(stats_dict(s));
             return out;
           })
      .def("reset_stats", &Runtime::reset_stats)
      .def("hint_accuracy", &Runtime::hint_accuracy)
      .def("cost_scales", &Runtime::cost_scales)
      .def("mover_stats", &Runtime::mover_stats)
      .def("resident_experts", &Runtime::resident_experts);
}
