// The assertion macro, the environment-setting parser and the ISA choice.
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "core/env_choice.h"
#include "cpu/isa.h"
#include "hm_test.h"

HM_TEST(check_throws_value_error_with_location) {
  bool caught = false;
  try {
    const int budget = -1;
    HM_CHECK(budget >= 0, "budget must be >= 0, got ", budget);
  } catch (const hm::ValueError& e) {
    caught = true;
    const std::string msg = e.what();
    HM_EXPECT(msg.find("budget must be >= 0, got -1") != std::string::npos);
    HM_EXPECT(msg.find("budget >= 0") != std::string::npos);      // the expression
    HM_EXPECT(msg.find("test_check.cpp:") != std::string::npos);  // file and line
  }
  HM_EXPECT(caught);
}

HM_TEST(check_rt_throws_runtime_error) {
  HM_EXPECT_THROWS(HM_CHECK_RT(1 + 1 == 3, "arithmetic"), hm::RuntimeError);
  HM_CHECK(true, "never thrown");  // a passing check is silent
}

HM_TEST(env_choice_index_unset_and_bad_value) {
  const char* var = "HM_TEST_ENV_CHOICE";
  ::unsetenv(var);
  HM_EXPECT(hm::env_choice(var, {"auto", "0", "1"}) == -1);
  ::setenv(var, "", 1);
  HM_EXPECT(hm::env_choice(var, {"auto", "0", "1"}) == -1);
  ::setenv(var, "1", 1);
  HM_EXPECT(hm::env_choice(var, {"auto", "0", "1"}) == 2);
  ::setenv(var, "yes", 1);
  bool caught = false;
  try {
    hm::env_choice(var, {"auto", "0", "1"});
  } catch (const hm::ValueError& e) {
    caught = true;
    const std::string msg = e.what();
    HM_EXPECT(msg.find("environment variable HM_TEST_ENV_CHOICE='yes': expected auto, 0 or 1") !=
              std::string::npos);
  }
  HM_EXPECT(caught);
  ::unsetenv(var);
}

HM_TEST(isa_parse_and_choice) {
  HM_EXPECT(hm::cpu::parse_isa("generic") == hm::cpu::Isa::kGeneric);
  HM_EXPECT(hm::cpu::parse_isa("amx") == hm::cpu::Isa::kAmx);
  HM_EXPECT_THROWS(hm::cpu::parse_isa("sse9"), hm::ValueError);
  // generic always runs; the choice never exceeds what the machine can run.
  HM_EXPECT(hm::cpu::set_isa("generic").isa == hm::cpu::Isa::kGeneric);
  const auto& c = hm::cpu::set_isa("auto");
  HM_EXPECT(!c.reason.empty());
  if (c.isa == hm::cpu::Isa::kAmx) HM_EXPECT(hm::cpu::amx_usable());
  if (c.isa >= hm::cpu::Isa::kAvx512) HM_EXPECT(hm::cpu::avx512_usable());
  if (c.isa == hm::cpu::Isa::kAvx2) HM_EXPECT(hm::cpu::avx2_usable() && !hm::cpu::avx512_usable());
  HM_EXPECT(hm::cpu::parse_isa("avx2") == hm::cpu::Isa::kAvx2);
  HM_EXPECT(hm::cpu::physical_cores() >= 1);
}
