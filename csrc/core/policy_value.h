// The value policy's factory (implementation and its [NOTE] in policy_value.cpp).
#pragma once

#include <memory>

#include "core/policy.h"

namespace hm {

std::unique_ptr<Policy> make_value_policy(const ValueParams& vp);

// The value policy's estimate for tests and tools: predicted microseconds saved over the horizon
// by keeping (layer, expert) cached, at `step`. Throws when `policy` is not the value policy.
double value_estimate_us(const Policy& policy, int layer, int expert, int64_t step);

}  // namespace hm
