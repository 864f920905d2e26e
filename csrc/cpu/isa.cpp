#include "cpu/isa.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "core/check.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define HM_X86 1
#endif
#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace hm::cpu {
namespace {

#if HM_X86
void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
unsigned long long xgetbv0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if HM_X86
  unsigned r[4];
  cpuid(0, 0, r);
  const unsigned max_leaf = r[0];
  char vendor[13] = {};
  std::copy_n(reinterpret_cast<char*>(&r[1]), 4, vendor);
  std::copy_n(reinterpret_cast<char*>(&r[3]), 4, vendor + 4);
  std::copy_n(reinterpret_cast<char*>(&r[2]), 4, vendor + 8);
  f.vendor = vendor;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1;
  f.fma = (r[2] >> 12) & 1;
  f.f16c = (r[2] >> 29) & 1;
  if (osxsave) {
    const auto xcr0 = xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;                    // SSE, AVX
    f.os_avx512 = (xcr0 & 0xE6) == 0xE6;               // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
    f.os_amx = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  }
  if (max_leaf >= 7) {
    cpuid(7, 0, r);
    f.avx2 = (r[1] >> 5) & 1;
    f.avx512f = (r[1] >> 16) & 1;
    f.avx512dq = (r[1] >> 17) & 1;
    f.avx512bw = (r[1] >> 30) & 1;
    f.avx512vl = (r[1] >> 31) & 1;
    f.avx512_vnni = (r[2] >> 11) & 1;
    f.amx_bf16 = (r[3] >> 22) & 1;
    f.avx512_fp16 = (r[3] >> 23) & 1;
    f.amx_tile = (r[3] >> 24) & 1;
    f.amx_int8 = (r[3] >> 25) & 1;
    const unsigned max_sub = r[0];
    if (max_sub >= 1) {
      cpuid(7, 1, r);
      f.avx512_bf16 = (r[0] >> 5) & 1;
    }
  }
  cpuid(0x80000000u, 0, r);
  if (r[0] >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      cpuid(0x80000002u + i, 0, r);
      std::copy_n(reinterpret_cast<char*>(r), 16, brand + 16 * i);
    }
    f.brand = brand;
    f.brand.erase(0, f.brand.find_first_not_of(' '));
  }
#endif
  return f;
}

// Linux keeps AMX tile data off until a process asks (kernel >= 5.16); ask once.
bool request_amx_permission(std::string* why_not) {
#if defined(__linux__) && HM_X86
  constexpr int kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  unsigned long bitmask = 0;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    if (why_not) *why_not = "Linux refused AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
    return false;
  }
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0 ||
      !(bitmask & (1ul << kXfeatureXtiledata))) {
    if (why_not) *why_not = "Linux did not grant AMX tile data permission";
    return false;
  }
  return true;
#else
  if (why_not) *why_not = "AMX permission is only requested on Linux x86-64";
  return false;
#endif
}

std::mutex g_mutex;
bool g_resolved = false;
IsaChoice g_choice;

// Best variant at or below `cap` that the machine runs, with the reason for the choice.
IsaChoice choose(Isa cap, const std::string& cap_source) {
  IsaChoice c;
  std::string amx_why, avx_why, avx2_why;
  const bool amx = amx_usable(&amx_why);
  const bool avx = avx512_usable();
  const bool avx2 = avx2_usable();
  if (!avx) {
#if HYBRID_MOE_HAVE_AVX512
    avx_why = "CPU or OS lacks AVX512-F/BW/VL/BF16/VNNI";
#else
    avx_why = "this build has no AVX512 variant (compiler lacks -mavx512bf16)";
#endif
  }
  if (!avx2) {
#if HYBRID_MOE_HAVE_AVX2
    avx2_why = "CPU or OS lacks AVX2/FMA/F16C";
#else
    avx2_why = "this build has no AVX2 variant (compiler lacks -mavx2)";
#endif
  }
  if (cap >= Isa::kAmx && amx) {
    c.isa = Isa::kAmx;
    c.reason = "AMX tiles (bf16, int8) available and permitted";
  } else if (cap >= Isa::kAvx512 && avx) {
    c.isa = Isa::kAvx512;
    c.reason = cap < Isa::kAmx ? "capped at avx512 by " + cap_source
                               : "AVX512-BF16/VNNI available; no AMX: " + amx_why;
  } else if (cap >= Isa::kAvx2 && avx2) {
    c.isa = Isa::kAvx2;
    c.reason = cap < Isa::kAvx512 ? "capped at avx2 by " + cap_source
                                  : "AVX2/FMA/F16C available; no AVX512 variant: " + avx_why;
  } else {
    c.isa = Isa::kGeneric;
    c.reason =
        cap < Isa::kAvx2 ? "capped at generic by " + cap_source : "portable C++: " + avx2_why;
  }
  return c;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAmx:
      return "amx";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  if (name == "generic") return Isa::kGeneric;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  if (name == "amx") return Isa::kAmx;
  HM_CHECK(false, "unknown CPU ISA '", name, "': expected one of generic, avx2, avx512, amx, auto");
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

bool avx2_usable() {
#if HYBRID_MOE_HAVE_AVX2
  const auto& f = cpu_features();
  return f.os_avx && f.avx2 && f.fma && f.f16c;
#else
  return false;
#endif
}

bool avx512_usable() {
#if HYBRID_MOE_HAVE_AVX512
  const auto& f = cpu_features();
  return f.os_avx512 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512_bf16 &&
         f.avx512_vnni;
#else
  return false;
#endif
}

bool amx_usable(std::string* why_not) {
#if HYBRID_MOE_HAVE_AMX
  const auto& f = cpu_features();
  if (!(f.amx_tile && f.amx_bf16 && f.amx_int8)) {
    if (why_not) *why_not = "CPU has no AMX-BF16/INT8";
    return false;
  }
  if (!f.os_amx) {
    if (why_not) *why_not = "OS does not enable AMX tile state (XCR0)";
    return false;
  }
  if (!avx512_usable()) {
    if (why_not) *why_not = "AMX variant also needs AVX512-BF16/VNNI";
    return false;
  }
  static std::string perm_why;
  static const bool permitted = request_amx_permission(&perm_why);
  if (!permitted && why_not) *why_not = perm_why;
  return permitted;
#else
  if (why_not) *why_not = "this build has no AMX variant (compiler lacks -mamx-tile)";
  return false;
#endif
}

const IsaChoice& current_isa() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_resolved) {
    const char* env = std::getenv("HYBRID_MOE_CPU_ISA");
    Isa cap = Isa::kAmx;
    std::string source = "default";
    if (env && *env && std::string(env) != "auto") {
      try {
        cap = parse_isa(env);
      } catch (const ValueError&) {
        throw ValueError(std::string("environment variable HYBRID_MOE_CPU_ISA='") + env +
                         "' is not one of generic, avx2, avx512, amx, auto");
      }
      source = std::string("HYBRID_MOE_CPU_ISA=") + env;
    }
    g_choice = choose(cap, source);
    g_resolved = true;
  }
  return g_choice;
}

const IsaChoice& set_isa(const std::string& name) {
  const Isa cap = name == "auto" ? Isa::kAmx : parse_isa(name);
  IsaChoice c = choose(cap, "set_isa('" + name + "')");
  HM_CHECK(name == "auto" || c.isa == cap, "CPU ISA '", name,
           "' cannot run on this machine or build: ", c.reason);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_choice = std::move(c);
  g_resolved = true;
  return g_choice;
}

int physical_cores() {
#if defined(__linux__)
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    // Count distinct (package, core) pairs among the CPUs this process may run on.
    std::set<std::pair<int, int>> cores;
    int allowed = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &mask)) continue;
      ++allowed;
      const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
      std::ifstream core_f(base + "core_id"), pkg_f(base + "physical_package_id");
      int core = -1, pkg = -1;
      if (!(core_f >> core) || !(pkg_f >> pkg)) return std::max(1, allowed);
      cores.emplace(pkg, core);
    }
    if (!cores.empty()) return static_cast<int>(cores.size());
  }
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace hm::cpu
