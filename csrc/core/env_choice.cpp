#include "core/env_choice.h"

#include <cstdlib>
#include <string>

#include "core/check.h"

namespace hm {

int env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return -1;
  int i = 0;
  std::string expected;
  for (const char* c : choices) {
    if (std::string(v) == c) return i;
    expected += (i == 0 ? "" : i + 1 == static_cast<int>(choices.size()) ? " or " : ", ");
    expected += c;
    ++i;
  }
  HM_CHECK(false, "environment variable ", name, "='", v, "': expected ", expected);
  return -1;
}

}  // namespace hm
