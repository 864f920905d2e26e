// Routing-trace statistics: per-layer cache hit counts for LRU / Belady (core/trace_stats.h).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/registry.h"
#include "core/check.h"
#include "core/synthetic_route.h"
#include "core/trace_stats.h"

namespace py = pybind11;

namespace {

using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using OffArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

}  // namespace

HM_BINDINGS(traces) {
  m.def(
      "cache_hits",
      [](IdArray ids, OffArray offsets, int n_expert, int capacity, const std::string& policy) {
        HM_CHECK(ids.ndim() == 1, "ids must be 1-D, got ", ids.ndim(), " dims");
        HM_CHECK(offsets.ndim() == 1 && offsets.shape(0) >= 1,
                 "offsets must be 1-D with n_steps + 1 >= 1 entries");
        HM_CHECK(offsets.at(offsets.shape(0) - 1) == ids.shape(0),
                 "offsets[-1]=", offsets.at(offsets.shape(0) - 1),
                 " must equal len(ids)=", ids.shape(0));
        const hm::traces::CachePolicy p = hm::traces::parse_policy(policy);
        hm::traces::CacheHits h;
        {
          py::gil_scoped_release release;
          h = hm::traces::count_cache_hits(ids.data(), offsets.data(), offsets.shape(0) - 1,
                                           n_expert, capacity, p);
        }
        return py::make_tuple(h.hits, h.selections);
      },
      py::arg("ids"), py::arg("offsets"), py::arg("n_expert"), py::arg("capacity"),
      py::arg("policy"),
      "(hits, selections) of one layer's cache of `capacity` experts; step s selects "
      "ids[offsets[s]:offsets[s+1]]. policy: 'lru', 'belady' or 'belady_bypass'.");

  m.def(
      "layer_cache_hits",
      [](IdArray ids, OffArray token_offsets, int n_expert, std::vector<int> capacities,
         const std::string& policy) {
        HM_CHECK(ids.ndim() == 3, "ids must be [N, n_layer, top_k], got ", ids.ndim(), " dims");
        HM_CHECK(token_offsets.ndim() == 1 && token_offsets.shape(0) >= 1,
                 "token_offsets must be 1-D with n_steps + 1 >= 1 entries");
        const hm::traces::CachePolicy p = hm::traces::parse_policy(policy);
        const int64_t n = ids.shape(0);
        const int n_layer = static_cast<int>(ids.shape(1)), top_k = static_cast<int>(ids.shape(2));
        py::array_t<int64_t> out({n_layer, static_cast<int>(capacities.size()), 2});
        auto o = out.mutable_unchecked<3>();
        std::vector<std::vector<hm::traces::CacheHits>> res(capacities.size());
        {
          py::gil_scoped_release release;
          for (std::size_t c = 0; c < capacities.size(); ++c) {
            res[c] = hm::traces::count_layer_cache_hits(
                ids.data(), n, n_layer, top_k, token_offsets.data(), token_offsets.shape(0) - 1,
                n_expert, capacities[c], p);
          }
        }
        for (std::size_t c = 0; c < capacities.size(); ++c) {
          for (int l = 0; l < n_layer; ++l) {
            o(l, c, 0) = res[c][l].hits;
            o(l, c, 1) = res[c][l].selections;
          }
        }
        return out;
      },
      py::arg("ids"), py::arg("token_offsets"), py::arg("n_expert"), py::arg("capacities"),
      py::arg("policy"),
      "int64 [n_layer, len(capacities), 2] of (hits, selections): every layer with its own cache "
      "of each capacity. ids: int32 [N, n_layer, top_k]; token_offsets: [n_steps + 1].");

  m.def(
      "synthetic_route",
      [](F32Array popularity, F32Array hot_sigma, F32Array keep_prob, int top_k, int64_t n_tokens,
         float cold_mix, float drift, int hot_period, uint64_t seed) {
        HM_CHECK(popularity.ndim() == 2, "popularity must be [n_layer, n_expert], got ",
                 popularity.ndim(), " dims");
        const int n_layer = static_cast<int>(popularity.shape(0));
        HM_CHECK(hot_sigma.ndim() == 1 && hot_sigma.shape(0) == n_layer,
                 "hot_sigma must be [n_layer=", n_layer, "]");
        HM_CHECK(keep_prob.ndim() == 1 && keep_prob.shape(0) == n_layer,
                 "keep_prob must be [n_layer=", n_layer, "]");
        HM_CHECK(n_tokens >= 0 && top_k >= 1, "n_tokens >= 0 and top_k >= 1 needed, got ", n_tokens,
                 ", ", top_k);
        hm::traces::SyntheticRouteParams p;
        p.n_layer = n_layer;
        p.n_expert = static_cast<int>(popularity.shape(1));
        p.top_k = top_k;
        p.popularity = popularity.data();
        p.hot_sigma = hot_sigma.data();
        p.keep_prob = keep_prob.data();
        p.cold_mix = cold_mix;
        p.drift = drift;
        p.hot_period = hot_period;
        py::array_t<int32_t> ids(
            {n_tokens, static_cast<int64_t>(n_layer), static_cast<int64_t>(top_k)});
        py::array_t<float> weights(
            {n_tokens, static_cast<int64_t>(n_layer), static_cast<int64_t>(top_k)});
        int32_t* ip = ids.mutable_data();
        float* wp = weights.mutable_data();
        {
          py::gil_scoped_release release;
          hm::traces::synthetic_route(p, n_tokens, seed, ip, wp);
        }
        return py::make_tuple(ids, weights);
      },
      py::arg("popularity"), py::arg("hot_sigma"), py::arg("keep_prob"), py::arg("top_k"),
      py::arg("n_tokens"), py::arg("cold_mix"), py::arg("drift"), py::arg("hot_period"),
      py::arg("seed"),
      "Route n_tokens synthetic tokens (core/synthetic_route.h): (ids int32 [n, L, k], weights "
      "float32 [n, L, k]).");
}
