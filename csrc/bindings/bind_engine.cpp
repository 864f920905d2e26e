// The decision engine: cost model, policy names, simulator. Python validates arrays' dtypes and
// shapes (hybrid_moe/sim.py); C++ re-checks ranges. No logic here.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/convert.h"
#include "bindings/registry.h"
#include "core/cost_model.h"
#include "core/policy.h"
#include "core/simulator.h"

namespace py = pybind11;

namespace {

hm::Resource to_resource(const std::string& r) {
  if (r == "cpu") return hm::Resource::kCpu;
  if (r == "gpu") return hm::Resource::kGpu;
  if (r == "copy") return hm::Resource::kCopy;
  HM_CHECK(false, "unknown resource '", r, "': expected cpu, gpu or copy");
}

py::dict result_dict(const hm::SimResult& r) {
  py::dict d;
  d["policy"] = r.policy;
  d["n_slots"] = r.n_slots;
  d["layer_steps"] = r.layer_steps;
  d["decode_steps"] = r.decode_steps;
  d["decode_tokens"] = r.decode_tokens;
  d["prefill_steps"] = r.prefill_steps;
  d["prefill_tokens"] = r.prefill_tokens;
  d["decode_time_us"] = r.decode_time_us;
  d["prefill_time_us"] = r.prefill_time_us;
  d["step_latency_us"] = py::array_t<double>(r.step_latency_us.size(), r.step_latency_us.data());
  d["latency_mean_us"] = r.latency_mean_us;
  d["latency_p50_us"] = r.latency_p50_us;
  d["latency_p99_us"] = r.latency_p99_us;
  d["tokens_per_s"] = r.tokens_per_s;
  d["selections"] = r.selections;
  d["hits"] = r.hits;
  d["in_flight"] = r.in_flight;
  d["hit_rate"] = r.hit_rate;
  d["demand_copies"] = r.demand_copies;
  d["prefetch_copies"] = r.prefetch_copies;
  d["admit_copies"] = r.admit_copies;
  d["staging_copies"] = r.staging_copies;
  d["copy_bytes"] = r.copy_bytes;
  d["copy_bytes_per_token"] = r.copy_bytes_per_token;
  d["cpu_busy_us"] = r.cpu_busy_us;
  d["gpu_busy_us"] = r.gpu_busy_us;
  d["copy_busy_us"] = r.copy_busy_us;
  d["cpu_busy"] = r.cpu_busy;
  d["gpu_busy"] = r.gpu_busy;
  d["copy_busy"] = r.copy_busy;
  d["cpu_experts"] = r.cpu_experts;
  d["gpu_experts"] = r.gpu_experts;
  py::list layers;
  for (const auto& l : r.layers) {
    py::dict e;
    e["selections"] = l.selections;
    e["hits"] = l.hits;
    e["in_flight"] = l.in_flight;
    e["time_us"] = l.time_us;
    layers.append(e);
  }
  d["layers"] = layers;
  return d;
}

}  // namespace

HM_BINDINGS(engine) {
  m.def(
      "engine_check_value_params",
      [](const py::dict& d) { hm::bindings::value_params_from_dict(d); }, py::arg("params"),
      "ValueError when the value policy would reject these tunables");
  m.def(
      "engine_policy_names", [] { return hm::policy_names(); },
      "Names of the cache policies, in the order the sim command reports them.");

  py::class_<hm::CostModel>(
      m, "CostModel",
      "Predicted us of CPU, GPU and copy work for one expert (csrc/core/cost_model.h).")
      .def(py::init(
               [](const py::dict& profile, const std::string& fmt, int64_t hidden, int64_t inter) {
                 return hm::CostModel(hm::bindings::profile_from_dict(profile),
                                      hm::make_expert_layout(hm::parse_format(fmt), hidden, inter));
               }),
           py::arg("profile"), py::arg("fmt"), py::arg("hidden"), py::arg("intermediate"))
      .def("t_cpu", &hm::CostModel::t_cpu, py::arg("n_tokens"))
      .def("t_gpu", &hm::CostModel::t_gpu, py::arg("n_tokens"))
      .def("t_copy", &hm::CostModel::t_copy)
      .def(
          "refine",
          [](hm::CostModel& c, const std::string& r, int64_t n, double us, double alpha) {
            c.refine(to_resource(r), n, us, alpha);
          },
          py::arg("resource"), py::arg("n_tokens"), py::arg("observed_us"), py::arg("alpha") = 0.1)
      .def("scale",
           [](const hm::CostModel& c, const std::string& r) { return c.scale(to_resource(r)); })
      .def_property_readonly("expert_bytes", &hm::CostModel::expert_bytes);

  m.def(
      "simulate",
      [](py::array_t<int32_t, py::array::c_style> ids,
         py::array_t<float, py::array::c_style> weights,
         py::array_t<int64_t, py::array::c_style> step_offsets,
         py::array_t<int8_t, py::array::c_style> phase,
         py::array_t<uint8_t, py::array::c_style> computed, int n_layer, int n_expert, int top_k,
         const py::dict& profile, const std::string& fmt, int64_t hidden, int64_t intermediate,
         const std::string& policy, int n_slots, double predictor_accuracy, uint64_t seed,
         const py::dict& value_params, py::array_t<double, py::array::c_style> static_profile,
         bool warm_start) {
        hm::TraceView tv;
        tv.n_layer = n_layer;
        tv.n_expert = n_expert;
        tv.top_k = top_k;
        tv.n_steps = phase.size();
        tv.n_tokens = n_layer * top_k > 0 ? ids.size() / (int64_t(n_layer) * top_k) : 0;
        HM_CHECK(ids.size() == tv.n_tokens * n_layer * top_k && weights.size() == ids.size(),
                 "ids and weights must both hold n_tokens * n_layer * top_k values");
        HM_CHECK(step_offsets.size() == tv.n_steps + 1,
                 "step_offsets must have n_steps + 1 = ", tv.n_steps + 1, " entries, got ",
                 step_offsets.size());
        HM_CHECK(computed.size() == 0 || computed.size() == tv.n_tokens * n_layer,
                 "computed must be empty or hold n_tokens * n_layer values");
        tv.ids = ids.data();
        tv.weights = weights.data();
        tv.step_offsets = step_offsets.data();
        tv.phase = phase.data();
        tv.computed = computed.size() ? computed.data() : nullptr;
        hm::SimConfig cfg;
        cfg.policy = policy;
        cfg.n_slots = n_slots;
        cfg.predictor_accuracy = predictor_accuracy;
        cfg.seed = seed;
        cfg.value = hm::bindings::value_params_from_dict(value_params);
        cfg.static_profile.assign(static_profile.data(),
                                  static_profile.data() + static_profile.size());
        cfg.warm_start = warm_start;
        const hm::HardwareProfile prof = hm::bindings::profile_from_dict(profile);
        const hm::ExpertLayout layout =
            hm::make_expert_layout(hm::parse_format(fmt), hidden, intermediate);
        hm::SimResult r;
        {
          py::gil_scoped_release nogil;
          r = hm::simulate(tv, prof, layout, cfg);
        }
        return result_dict(r);
      },
      py::arg("ids"), py::arg("weights"), py::arg("step_offsets"), py::arg("phase"),
      py::arg("computed"), py::arg("n_layer"), py::arg("n_expert"), py::arg("top_k"),
      py::arg("profile"), py::arg("fmt"), py::arg("hidden"), py::arg("intermediate"),
      py::arg("policy"), py::arg("n_slots"), py::arg("predictor_accuracy"), py::arg("seed"),
      py::arg("value_params"), py::arg("static_profile") = py::array_t<double>(0),
      py::arg("warm_start") = false,
      "Replay a trace through cache, policy and scheduler (csrc/core/simulator.h); use "
      "hybrid_moe.sim.simulate.");
}
