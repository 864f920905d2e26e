// One parser for the string-valued settings read from the environment (the CPU kernels' tuning
// switches for A/B runs and the like), so that every one rejects a bad value the same way:
// with hm::ValueError naming the variable, its value and the choices, never silently.
#pragma once

#include <initializer_list>

namespace hm {

// Index in `choices` of environment variable `name`'s value; -1 when it is unset or empty.
// Any other value raises hm::ValueError ("environment variable NAME='v': expected a, b or c").
int env_choice(const char* name, std::initializer_list<const char*> choices);

}  // namespace hm
