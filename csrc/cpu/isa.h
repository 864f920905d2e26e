// [NOTE] Run-time choice of the CPU kernel variant.
//
// Variants are compiled with explicit per-file flags (CMakeLists.txt: *_avx2.cpp, *_avx512.cpp,
// *_amx.cpp) and chosen here, once, by CPUID + XGETBV (the OS must save the wider register state)
// and, for AMX, Linux's permission to use tile data (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
// The environment variable HYBRID_MOE_CPU_ISA=generic|avx2|avx512|amx caps the choice (it can
// lower, never raise, what the CPU and the build allow); set_isa() does the same from code.
// Order: generic < avx2 < avx512 < amx (avx2 is for CPUs without AVX512-BF16/VNNI, e.g. AMD Zen
// 2/3 and Intel desktop parts).
#pragma once

#include <string>

namespace hm::cpu {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_avx = false;     // XCR0 has SSE and AVX (YMM) state enabled
  bool os_avx512 = false;  // XCR0 has opmask/ZMM state enabled
  bool os_amx = false;     // XCR0 has tile config/data enabled
  std::string vendor, brand;
};

struct IsaChoice {
  Isa isa = Isa::kGeneric;
  std::string reason;  // one line: why this variant, what was missing for the next one
};

const char* isa_name(Isa isa);
Isa parse_isa(const std::string& name);  // throws hm::ValueError on an unknown name

const CpuFeatures& cpu_features();  // detected once
bool avx2_usable();                 // CPU, OS and this build all allow the AVX2 variant
bool avx512_usable();               // CPU, OS and this build all allow the AVX512 variant
// AMX usable: CPU, OS, build and Linux's tile-data permission (requested on first call).
bool amx_usable(std::string* why_not = nullptr);

// The variant kernels use now. First call resolves HYBRID_MOE_CPU_ISA and the CPU's features.
const IsaChoice& current_isa();
// Cap the variant at `name` (generic|avx2|avx512|amx|auto); throws hm::ValueError if unknown or if
// the// machine cannot run it.
const IsaChoice& set_isa(const std::string& name);

// Physical cores available to this process (not hyper-threads); at least 1.
int physical_cores();

}  // namespace hm::cpu
