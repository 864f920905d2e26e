#include <cstring>
#include <exception>

#include "hm_test.h"

namespace hm::test {

std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

static int g_failures_in_case = 0;

void record_failure(const char* file, int line, const std::string& what) {
  ++g_failures_in_case;
  std::cerr << "  FAILED " << file << ":" << line << ": " << what << "\n";
}

}  // namespace hm::test

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0;
  for (const auto& c : hm::test::cases()) {
    if (filter && c.name.find(filter) == std::string::npos) continue;
    hm::test::g_failures_in_case = 0;
    try {
      c.fn();
    } catch (const std::exception& e) {
      hm::test::record_failure(c.name.c_str(), 0, std::string("uncaught exception: ") + e.what());
    }
    const bool ok = hm::test::g_failures_in_case == 0;
    std::cout << (ok ? "[ ok ] " : "[FAIL] ") << c.name << "\n";
    (ok ? passed : failed) += 1;
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 && passed > 0 ? 0 : 1;
}
