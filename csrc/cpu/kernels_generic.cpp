// [NOTE] Portable C++ variant of the expert kernel building blocks (kernel_ops.h): correct on any
// CPU, and the reference the SIMD variants are tested against. BF16 keeps activations in fp32
// (exact products); Q8_0 quantises activations per 32-block like the SIMD variants and sums the
// int8 x int8 products of a block exactly in int32 before scaling by d_w * d_x.
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/env_choice.h"
#include "core/q8_rows16.h"
#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"

namespace hm::cpu {
std::size_t fp32_q8_packed_bytes(WeightFormat f, int n_tok, int64_t n) {
  if (f == WeightFormat::kBF16) return static_cast<std::size_t>(n_tok) * n * sizeof(float);
  return static_cast<std::size_t>(n_tok) * (n / kQ8BlockSize) * sizeof(QuantBlockQ8);
}

void pack_q8_blocks(int n_tok, int64_t n, int64_t k0, int64_t k1, const float* const* src,
                    uint8_t* packed) {
  for (int t = 0; t < n_tok; ++t) {
    auto* blocks = reinterpret_cast<QuantBlockQ8*>(packed) + t * (n / kQ8BlockSize);
    for (int64_t k = k0; k < k1; k += kQ8BlockSize)
      quantize_block_q8(src[t] + (k - k0), &blocks[k / kQ8BlockSize]);
  }
}

void generic_dot_groups_q8(const uint8_t* w, int64_t groups, int64_t n_in, const uint8_t* packed,
                           int n_tok, float* y, int64_t ldy) {
  const int64_t nb = n_in / kQ8BlockSize;
  const std::size_t group_bytes = kQ8GroupRows * row_bytes(WeightFormat::kQ8_0, n_in);
  const auto* acts = reinterpret_cast<const QuantBlockQ8*>(packed);
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* grp = w + g * group_bytes;
    for (int r = 0; r < kQ8GroupRows; ++r)
      for (int t = 0; t < n_tok; ++t) {
        const QuantBlockQ8* a = acts + t * nb;
        float sum = 0.f;
        for (int64_t b = 0; b < nb; ++b) {
          const uint8_t* q = grp + q8r16_value_offset(nb, b * kQ8BlockSize, r);
          int32_t isum = 0;
          for (int k = 0; k < kQ8BlockSize; ++k)  // stored q ^ 0x80 = q + 128
            isum += (int32_t(q[(k / 4) * 64 + k % 4]) - 128) * int32_t(a[b].q[k]);
          uint16_t d;
          std::memcpy(&d, grp + q8r16_scale_offset(b, r), 2);
          sum += static_cast<float>(isum) * (f16_to_f32(d) * a[b].d);
        }
        y[t * ldy + g * kQ8GroupRows + r] = sum;
      }
  }
}

namespace {

void generic_pack(WeightFormat f, int n_tok, int64_t n, int64_t k0, int64_t k1,
                  const float* const* src, uint8_t* packed) {
  if (f == WeightFormat::kQ8_0) return pack_q8_blocks(n_tok, n, k0, k1, src, packed);
  for (int t = 0; t < n_tok; ++t) {
    float* dst = reinterpret_cast<float*>(packed) + t * n + k0;
    for (int64_t k = k0; k < k1; ++k) dst[k - k0] = src[t][k - k0];
  }
}

void generic_dot_rows(WeightFormat f, const uint8_t* w, std::size_t row_stride, int64_t rows,
                      int64_t n_in, const uint8_t* packed, int n_tok, float* y, int64_t ldy) {
  if (f == WeightFormat::kBF16) {
    thread_local std::vector<float> wrow;
    wrow.resize(n_in);
    const float* acts = reinterpret_cast<const float*>(packed);
    for (int64_t r = 0; r < rows; ++r) {
      const auto* src = reinterpret_cast<const uint16_t*>(w + r * row_stride);
      for (int64_t k = 0; k < n_in; ++k) wrow[k] = bf16_to_f32(src[k]);
      for (int t = 0; t < n_tok; ++t) {
        const float* a = acts + t * n_in;
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        int64_t k = 0;
        for (; k + 4 <= n_in; k += 4) {
          s0 += wrow[k] * a[k];
          s1 += wrow[k + 1] * a[k + 1];
          s2 += wrow[k + 2] * a[k + 2];
          s3 += wrow[k + 3] * a[k + 3];
        }
        for (; k < n_in; ++k) s0 += wrow[k] * a[k];
        y[t * ldy + r] = (s0 + s1) + (s2 + s3);
      }
    }
    return;
  }
  const int64_t nb = n_in / kQ8BlockSize;
  const auto* acts = reinterpret_cast<const QuantBlockQ8*>(packed);
  for (int64_t r = 0; r < rows; ++r) {
    const auto* wb = reinterpret_cast<const BlockQ8_0*>(w + r * row_stride);
    for (int t = 0; t < n_tok; ++t) {
      const QuantBlockQ8* a = acts + t * nb;
      float sum = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t isum = 0;
        for (int i = 0; i < kQ8BlockSize; ++i) isum += int32_t(wb[b].qs[i]) * int32_t(a[b].q[i]);
        sum += static_cast<float>(isum) * (f16_to_f32(wb[b].d) * a[b].d);
      }
      y[t * ldy + r] = sum;
    }
  }
}

}  // namespace

namespace {
// HYBRID_MOE_PREFETCH in bytes, -1 when unset or empty (read once).
int prefetch_setting() {
  static const int bytes = [] {
    const char* v = std::getenv("HYBRID_MOE_PREFETCH");
    if (!v || !*v) return -1;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    HM_CHECK(end && *end == '\0' && n >= 0 && n <= (1 << 20),
             "environment variable HYBRID_MOE_PREFETCH='", v,
             "': expected bytes in [0, 1048576] (0: no software prefetch)");
    return static_cast<int>(n);
  }();
  return bytes;
}
}  // namespace

int prefetch_bytes() {
  const int v = prefetch_setting();
  return v >= 0 ? v : kDefaultPrefetchBytes;
}

int q8_group_prefetch_bytes() {
  const int v = prefetch_setting();
  return v >= 0 ? v : kDefaultQ8GroupPrefetchBytes;
}

PrefetchHint prefetch_hint(WeightFormat f) {
  static const int env = env_choice("HYBRID_MOE_PREFETCH_HINT", {"l1", "l2", "nta"});
  constexpr PrefetchHint kHints[] = {PrefetchHint::kL1, PrefetchHint::kL2,
                                     PrefetchHint::kNonTemporal};
  if (env >= 0) return kHints[env];
  return f == WeightFormat::kQ8_0 ? PrefetchHint::kL2 : PrefetchHint::kL1;
}

bool prefetch_every_line() {
  static const bool every = env_choice("HYBRID_MOE_PREFETCH_LINES", {"every", "step"}) != 1;
  return every;
}

RowOrder row_order(RowOrder when_unset) {
  static const int order = env_choice("HYBRID_MOE_ROW_ORDER", {"interleaved", "streams"});
  return order < 0 ? when_unset : order == 0 ? RowOrder::kInterleaved : RowOrder::kStreams;
}

AmxKernel amx_kernel() {
  static const AmxKernel k = [] {
    constexpr AmxKernel kKernels[] = {AmxKernel::kAuto, AmxKernel::kPipelined, AmxKernel::kSimple};
    const int i = env_choice("HYBRID_MOE_AMX_KERNEL", {"auto", "pipelined", "simple"});
    return i < 0 ? AmxKernel::kAuto : kKernels[i];
  }();
  return k;
}

const KernelOps& generic_ops() {
  static const KernelOps ops{Isa::kGeneric, fp32_q8_packed_bytes, generic_pack, generic_dot_rows,
                             generic_dot_groups_q8};
  return ops;
}

const KernelOps& kernel_ops(Isa isa) {
#if HYBRID_MOE_HAVE_AMX
  if (isa == Isa::kAmx) {
    HM_CHECK(amx_usable(), "CPU ISA amx requested but this machine cannot run it");
    return amx_ops();
  }
#endif
#if HYBRID_MOE_HAVE_AVX512
  if (isa == Isa::kAvx512 || isa == Isa::kAmx) {
    HM_CHECK(avx512_usable(), "CPU ISA avx512 requested but this machine cannot run it");
    return avx512_ops();
  }
#endif
#if HYBRID_MOE_HAVE_AVX2
  if (isa == Isa::kAvx2) {
    HM_CHECK(avx2_usable(), "CPU ISA avx2 requested but this machine cannot run it");
    return avx2_ops();
  }
#endif
  HM_CHECK(isa == Isa::kGeneric, "CPU ISA ", isa_name(isa), " is not built into this library");
  return generic_ops();
}

}  // namespace hm::cpu
