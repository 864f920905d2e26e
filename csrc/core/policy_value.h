// The value policy's factory (implementation and its [NOTE] in policy_value.cpp).
#pragma once

#include <memory>

#include "core/policy.h"

namespace hm {

std::unique_ptr<Policy> make_value_policy(const ValueParams& vp);

// The value policy's estimate for tests and tools: predicted microseconds saved over the horizon
// by keeping (layer, expert) cached, at `step`. Throws when `policy` is not the value policy.
double value_estimate_us(const Policy& policy, int layer, int expert, int64_t step);

// The policy's libm-free helpers (exposed for their accuracy tests): log2(x) for x > 0, 2^x, and
// log2(2^a + 2^b) (either may be -inf). Relative / absolute error below 1e-5.
namespace value_math {
double fast_log2(double x);
double fast_exp2(double x);
double log2_add(double a, double b);
}  // namespace value_math

}  // namespace hm
