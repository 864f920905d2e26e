// [NOTE] See synthetic_route.h for the routing model. Layers are independent streams, so the
// outer loop runs over layers and all state of one layer (E floats) stays in L1.
#include "core/synthetic_route.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "core/check.h"

namespace hm::traces {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Rng {  // xoshiro256**
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) w = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t r = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  // Uniform in (0, 1): 24 random bits, never 0 or 1.
  float uniform() { return (static_cast<float>(next() >> 40) + 0.5f) * (1.0f / 16777216.0f); }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> s_{};
};

// Standard-normal quantiles at (i + 0.5) / 65536, by bisection on erfc (once, ~50 ms).
const std::vector<float>& normal_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (int i = 0; i < 65536; ++i) {
      const double p = (i + 0.5) / 65536.0;
      double lo = -6.0, hi = 6.0;
      for (int it = 0; it < 40; ++it) {
        const double mid = 0.5 * (lo + hi);
        (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
      }
      t[i] = static_cast<float>(0.5 * (lo + hi));
    }
    return t;
  }();
  return table;
}

class NormalSource {  // 4 table normals per 64-bit draw
 public:
  NormalSource(Rng& rng) : rng_(rng), table_(normal_table()) {}
  float next() {
    if (left_ == 0) {
      bits_ = rng_.next();
      left_ = 4;
    }
    const float v = table_[bits_ & 0xFFFF];
    bits_ >>= 16;
    --left_;
    return v;
  }

 private:
  Rng& rng_;
  const std::vector<float>& table_;
  uint64_t bits_ = 0;
  int left_ = 0;
};

void route_layer(const SyntheticRouteParams& p, int l, int64_t n_tokens, uint64_t seed,
                 int32_t* ids, float* weights) {
  const int E = p.n_expert, k = p.top_k, L = p.n_layer;
  uint64_t sm = seed ^ (0xA0761D6478BD642Full * static_cast<uint64_t>(l + 1));
  Rng rng(splitmix64(sm));
  NormalSource normal(rng);
  const float* base = p.popularity + static_cast<int64_t>(l) * E;
  const float hot = p.hot_sigma[l], keep = p.keep_prob[l];
  const float step_drift = std::pow(p.drift, static_cast<float>(p.hot_period));
  const float innov = std::sqrt(std::max(0.f, 1.f - step_drift * step_drift));

  std::vector<float> z(E), boost(E), q(E), cdf(E);
  for (int e = 0; e < E; ++e) {
    z[e] = normal.next();
    boost[e] = base[e] * std::exp(hot * z[e]);
  }
  std::vector<int32_t> prev(k, -1), chosen(k);
  std::vector<char> taken(E, 0), kept_flag(k);
  std::vector<float> score(k);
  std::vector<int> order(k);
  for (int64_t t = 0; t < n_tokens; ++t) {
    // Refresh the hot values due this token (staggered: expert e at t % period == e % period).
    const int phase = static_cast<int>(t % p.hot_period);
    for (int e = phase; e < E; e += p.hot_period) {
      z[e] = step_drift * z[e] + innov * normal.next();
      boost[e] = base[e] * std::exp(hot * z[e]);
    }
    double zsum = 0;
    for (int e = 0; e < E; ++e) zsum += boost[e];
    const float hot_scale = static_cast<float>((1.0 - p.cold_mix) / zsum);
    float acc = 0.f;
    for (int e = 0; e < E; ++e) {
      q[e] = p.cold_mix * base[e] + hot_scale * boost[e];
      acc += q[e];
      cdf[e] = acc;
    }
    int n = 0;
    if (t > 0) {
      for (int j = 0; j < k; ++j) {
        if (rng.uniform() < keep) {
          taken[prev[j]] = 1;
          kept_flag[n] = 1;
          chosen[n++] = prev[j];
        }
      }
    }
    const int n_kept = n;
    float free_mass = acc;
    for (int j = 0; j < n; ++j) free_mass -= q[chosen[j]];
    int tries = 0;
    while (n < k) {
      int e;
      if (tries < 32) {  // rejection sampling against already chosen experts
        const float u = rng.uniform() * acc;
        e = static_cast<int>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
        e = std::min(e, E - 1);
        ++tries;
        if (taken[e] || q[e] <= 0.f) continue;
      } else {  // mass mostly taken: draw directly among the free experts
        float u = rng.uniform() * std::max(free_mass, 0.f);
        e = -1;
        for (int c = 0; c < E; ++c) {
          if (taken[c] || q[c] <= 0.f) continue;
          e = c;
          u -= q[c];
          if (u <= 0.f) break;
        }
        HM_CHECK(e >= 0, "layer ", l, " has fewer than top_k=", k, " experts with popularity > 0");
      }
      taken[e] = 1;
      kept_flag[n] = 0;
      chosen[n++] = e;
      free_mass -= q[e];
    }
    for (int j = 0; j < k; ++j) {
      const float g = -std::log(-std::log(rng.uniform()));
      score[j] = std::log(q[chosen[j]]) + g + (j < n_kept ? 1.f : 0.f);
      order[j] = j;
    }
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      return score[a] > score[b] || (score[a] == score[b] && chosen[a] < chosen[b]);
    });
    int32_t* out_ids = ids + (t * L + l) * k;
    float* out_w = weights + (t * L + l) * k;
    const float top = score[order[0]];
    float wsum = 0.f;
    for (int j = 0; j < k; ++j) {
      out_ids[j] = chosen[order[j]];
      out_w[j] = std::exp(score[order[j]] - top);
      wsum += out_w[j];
    }
    for (int j = 0; j < k; ++j) {
      out_w[j] /= wsum;
      taken[out_ids[j]] = 0;
      prev[j] = out_ids[j];
    }
  }
}

}  // namespace

void synthetic_route(const SyntheticRouteParams& p, int64_t n_tokens, uint64_t seed, int32_t* ids,
                     float* weights) {
  HM_CHECK(p.n_layer >= 1 && p.n_expert >= 1, "n_layer and n_expert must be >= 1, got ", p.n_layer,
           ", ", p.n_expert);
  HM_CHECK(p.top_k >= 1 && p.top_k <= p.n_expert, "top_k must be in [1, n_expert=", p.n_expert,
           "], got ", p.top_k);
  HM_CHECK(n_tokens >= 0, "n_tokens must be >= 0, got ", n_tokens);
  HM_CHECK(p.popularity && p.hot_sigma && p.keep_prob, "popularity, hot_sigma, keep_prob needed");
  HM_CHECK(p.cold_mix >= 0.f && p.cold_mix <= 1.f, "cold_mix must be in [0, 1], got ", p.cold_mix);
  HM_CHECK(p.drift >= 0.f && p.drift < 1.f, "drift must be in [0, 1), got ", p.drift);
  HM_CHECK(p.hot_period >= 1, "hot_period must be >= 1, got ", p.hot_period);
  for (int l = 0; l < p.n_layer; ++l) {
    HM_CHECK(p.keep_prob[l] >= 0.f && p.keep_prob[l] <= 1.f, "keep_prob[", l,
             "] must be in [0, 1], got ", p.keep_prob[l]);
    int positive = 0;
    for (int e = 0; e < p.n_expert; ++e) {
      const float v = p.popularity[static_cast<int64_t>(l) * p.n_expert + e];
      HM_CHECK(std::isfinite(v) && v >= 0.f, "popularity[", l, ", ", e,
               "] must be finite and >= 0, got ", v);
      positive += v > 0.f;
    }
    HM_CHECK(positive >= p.top_k, "layer ", l, " has ", positive,
             " experts with popularity > 0, fewer than top_k=", p.top_k);
  }
  for (int l = 0; l < p.n_layer; ++l) route_layer(p, l, n_tokens, seed, ids, weights);
}

}  // namespace hm::traces
