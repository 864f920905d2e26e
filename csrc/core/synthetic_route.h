// [NOTE] The hot loop of the synthetic routing-trace generator (python/hybrid_moe/traces/
// synthetic.py holds the model's description, presets and calibration; this file only routes).
//
// Per layer l, independently (own random stream derived from seed and l):
//   hot value z[e]: AR(1) with coefficient `drift` per token, standard-normal stationary law;
//     expert e's value is refreshed every `hot_period` tokens (staggered over experts) with the
//     matching drift^hot_period step, which keeps the law and cuts the random draws.
//   fresh-pick distribution q[e] = cold_mix * p[e] + (1 - cold_mix) * p[e] exp(hot_sigma z[e]) / Z
//   token t: each expert of token t-1 is kept with probability keep_prob[l]; the remaining slots
//     are filled by sampling without replacement from q (sequential draws, i.e. Plackett-Luce,
//     the same law as Gumbel top-k); router weight = softmax over the chosen of
//     log q[e] + Gumbel noise (+1 for kept experts); slots sorted by weight, largest first.
// Random numbers: xoshiro256** seeded through splitmix64; normals from a 65536-entry table of
// standard-normal quantiles (4 per 64-bit draw; tails cut at ~4.3 sigma, harmless here).
// Deterministic for a given (seed, inputs) on a given build.
#pragma once

#include <cstdint>

namespace hm::traces {

struct SyntheticRouteParams {
  int n_layer = 0;
  int n_expert = 0;
  int top_k = 0;
  const float* popularity = nullptr;  // [n_layer, n_expert], >= 0, rows with >= top_k positive
  const float* hot_sigma = nullptr;   // [n_layer]
  const float* keep_prob = nullptr;   // [n_layer], in [0, 1]
  float cold_mix = 0.f;               // [0, 1]
  float drift = 0.f;                  // [0, 1)
  int hot_period = 1;                 // >= 1
};

// ids: [n_tokens, n_layer, top_k] int32, weights: same shape float32 (row-major), both written.
// Throws hm::ValueError on bad parameters.
void synthetic_route(const SyntheticRouteParams& p, int64_t n_tokens, uint64_t seed, int32_t* ids,
                     float* weights);

}  // namespace hm::traces
