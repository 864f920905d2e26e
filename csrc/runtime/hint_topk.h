// [NOTE] Next-layer prefetch hints from router logits, decoded on the host.
// The decode hand-off can carry layer l + 1's router logits [T, E] (fp32 or bf16) instead of
// top-k ids: the stage kernel copies them with the layer's other inputs and the planner takes the
// top k here, so a model's hint path is its router GEMV alone (no top-k, cast and copy kernels on
// the GPU's critical path, ~3 us each on a replayed graph).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace hm::runtime {

enum class HintKind : int {
  kIds = 0,         // int32 [n] expert ids
  kLogitsF32 = 1,   // fp32 [T, E] router logits
  kLogitsBf16 = 2,  // bf16 [T, E] router logits
};

inline float hint_logit(const void* logits, HintKind kind, int64_t i) {
  if (kind == HintKind::kLogitsF32) return static_cast<const float*>(logits)[i];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(logits)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

constexpr int kHintTopkMax = 64;  // top-k routers use k <= 8; the runtime checks this bound

// ids [T, k] <- per token the k largest logits of its row (descending; ties: lower id first; NaN
// never chosen before a number). 1 <= k <= min(E, kHintTopkMax).
inline void hint_topk(const void* logits, HintKind kind, int T, int E, int k, int32_t* ids) {
  for (int t = 0; t < T; ++t) {
    float best[kHintTopkMax];
    int32_t* row_ids = ids + static_cast<int64_t>(t) * k;
    int n = 0;
    for (int e = 0; e < E; ++e) {
      float v = hint_logit(logits, kind, static_cast<int64_t>(t) * E + e);
      if (std::isnan(v)) v = -INFINITY;
      if (n == k && !(v > best[k - 1])) continue;
      int j = n < k ? n++ : k - 1;  // insertion: shift smaller entries down
      while (j > 0 && v > best[j - 1]) {
        best[j] = best[j - 1];
        row_ids[j] = row_ids[j - 1];
        --j;
      }
      best[j] = v;
      row_ids[j] = e;
    }
  }
}

}  // namespace hm::runtime
