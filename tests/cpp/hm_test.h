// [NOTE] A deliberately small C++ test harness. GoogleTest would be the usual choice, but these
// tests must also build on the lent GPU machine, which reaches no package registry, so the project
// carries its own ~80 lines instead of a download.
//
//   HM_TEST(suite_name) { HM_EXPECT(a == b); HM_EXPECT_NEAR(x, y, 1e-6); HM_EXPECT_THROWS(f(),
//   hm::ValueError); }
//
// Every test file is linked into one executable (hm_cpp_tests) that runs all tests, or those whose
// name contains argv[1], and ends with the line "N passed, N failed".
#pragma once

#include <cmath>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace hm::test {

struct Case {
  std::string name;
  std::function<void()> fn;
};
std::vector<Case>& cases();
void record_failure(const char* file, int line, const std::string& what);

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) {
    cases().push_back({name, std::move(fn)});
  }
};

}  // namespace hm::test

#define HM_TEST(name)                                                           \
  static void hm_test_##name();                                                 \
  static const ::hm::test::Registrar hm_test_reg_##name(#name, hm_test_##name); \
  static void hm_test_##name()

#define HM_EXPECT(cond)                                                 \
  do {                                                                  \
    if (!(cond)) ::hm::test::record_failure(__FILE__, __LINE__, #cond); \
  } while (0)

#define HM_EXPECT_NEAR(a, b, tol)                                                          \
  do {                                                                                     \
    const double hm_a_ = (a), hm_b_ = (b);                                                 \
    if (!(std::fabs(hm_a_ - hm_b_) <= (tol))) {                                            \
      std::ostringstream hm_os_;                                                           \
      hm_os_ << #a " = " << hm_a_ << " vs " #b " = " << hm_b_ << " (tol " << (tol) << ")"; \
      ::hm::test::record_failure(__FILE__, __LINE__, hm_os_.str());                        \
    }                                                                                      \
  } while (0)

#define HM_EXPECT_THROWS(stmt, ExType)                                                 \
  do {                                                                                 \
    bool hm_thrown_ = false;                                                           \
    try {                                                                              \
      stmt;                                                                            \
    } catch (const ExType&) {                                                          \
      hm_thrown_ = true;                                                               \
    }                                                                                  \
    if (!hm_thrown_)                                                                   \
      ::hm::test::record_failure(__FILE__, __LINE__, #stmt " did not throw " #ExType); \
  } while (0)
