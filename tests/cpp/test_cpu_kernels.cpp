// CPU kernel building blocks (kernel_ops.h) of every ISA this machine runs, against a double
// reference on the same (quantised / bf16-rounded) activations: every row count around the 4-row
// blocking (tails 1-3), token counts around the 4-token blocking and the AMX threshold, Q8 block
// counts odd and even (the single-block tail), bf16 row lengths not a multiple of 32, weights with
// int8 -128 and negative fp16 scales, and activations packed in 32-value pieces (as phase 1 packs
// h) giving the same bytes as one whole pack.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/q8_rows16.h"
#include "core/weight_format.h"
#include "cpu/isa.h"
#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"
#include "hm_test.h"

namespace {

using hm::WeightFormat;
using hm::cpu::Isa;

std::vector<Isa> runnable_isas() {
  std::vector<Isa> v{Isa::kGeneric};
  if (hm::cpu::avx2_usable()) v.push_back(Isa::kAvx2);
  if (hm::cpu::avx512_usable()) v.push_back(Isa::kAvx512);
  if (hm::cpu::amx_usable()) v.push_back(Isa::kAmx);
  return v;
}

// Random weights [rows][n] in format f (every byte pattern a GGUF file may hold, incl. q = -128),
// and their values as doubles.
void random_rows(WeightFormat f, int64_t rows, int64_t n, std::mt19937& rng,
                 std::vector<uint8_t>& bytes, std::vector<double>& vals) {
  const std::size_t rb = hm::row_bytes(f, n);
  bytes.assign(rb * rows, 0);
  vals.assign(rows * n, 0.0);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_int_distribution<int> q(-128, 127), mant(0, 1023), expo(8, 16), coin(0, 7);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = bytes.data() + r * rb;
    if (f == WeightFormat::kBF16) {
      for (int64_t k = 0; k < n; ++k) {
        const uint16_t b = hm::cpu::f32_to_bf16(nd(rng));
        std::memcpy(row + 2 * k, &b, 2);
        vals[r * n + k] = hm::cpu::bf16_to_f32(b);
      }
      continue;
    }
    for (int64_t b = 0; b < n / 32; ++b) {
      // fp16 scale: normal numbers 2^-7 .. 2^1, one in 8 negative.
      const uint16_t d =
          static_cast<uint16_t>((coin(rng) == 0 ? 0x8000 : 0) | (expo(rng) << 10) | mant(rng));
      std::memcpy(row + b * 34, &d, 2);
      const double dd = hm::cpu::f16_to_f32(d);
      for (int i = 0; i < 32; ++i) {
        const int v = q(rng);
        row[b * 34 + 2 + i] = static_cast<uint8_t>(static_cast<int8_t>(v));
        vals[r * n + b * 32 + i] = dd * v;
      }
    }
  }
}

// The activations as the kernels see them: bf16-rounded (AVX512/AMX bf16), fp32 (generic and
// AVX2 bf16) or Q8-quantised per 32-block (every Q8 variant).
std::vector<double> effective_acts(WeightFormat f, Isa isa, const std::vector<float>& x,
                                   int64_t n) {
  std::vector<double> v(x.size());
  if (f == WeightFormat::kBF16) {
    for (std::size_t i = 0; i < x.size(); ++i)
      v[i] = isa <= Isa::kAvx2 ? x[i] : hm::cpu::bf16_to_f32(hm::cpu::f32_to_bf16(x[i]));
    return v;
  }
  for (std::size_t b = 0; b < x.size() / 32; ++b) {
    hm::cpu::QuantBlockQ8 blk;
    hm::cpu::quantize_block_q8(x.data() + b * 32, &blk);
    for (int i = 0; i < 32; ++i) v[b * 32 + i] = double(blk.d) * blk.q[i];
  }
  (void)n;
  return v;
}

// Packs n_tok tokens of n values [k0, k1) at a time in pieces of `piece` values (0: whole).
void pack_all(const hm::cpu::KernelOps& ops, WeightFormat f, int n_tok, int64_t n,
              const std::vector<float>& x, int64_t piece, std::vector<uint8_t>& buf) {
  std::vector<const float*> src(n_tok);
  if (piece <= 0) piece = n;
  for (int64_t k0 = 0; k0 < n; k0 += piece) {
    const int64_t k1 = std::min(n, k0 + piece);
    for (int t = 0; t < n_tok; ++t) src[t] = x.data() + t * n + k0;
    ops.pack(f, n_tok, n, k0, k1, src.data(), buf.data());
  }
}

// groups: the rows repacked in groups of 16 (core/q8_rows16.h) and dotted by dot_groups_q8.
bool check_dot_rows(Isa isa, WeightFormat f, int64_t rows, int64_t n, int n_tok, uint32_t seed,
                    bool groups = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint8_t> w;
  std::vector<double> wv;
  random_rows(f, rows, n, rng, w, wv);
  std::vector<float> x(static_cast<std::size_t>(n_tok) * n);
  for (auto& v : x) v = nd(rng);
  const auto& ops = hm::cpu::kernel_ops(isa);
  const std::size_t bytes = ops.packed_bytes(f, n_tok, n);
  // Whole pack and 32-value pieces give the same bytes (buffers start with the same garbage).
  std::vector<uint8_t> packed(bytes + 64, 0xA5), pieces(bytes + 64, 0xA5);
  pack_all(ops, f, n_tok, n, x, 0, packed);
  pack_all(ops, f, n_tok, n, x, 32, pieces);
  bool ok = packed == pieces;
  const int64_t ldy = rows + 3;  // y[t * ldy + r]; the gap must stay untouched
  std::vector<float> y(static_cast<std::size_t>(n_tok) * ldy, 7.f);
  if (groups) {
    std::vector<uint8_t> w16(w.size());
    hm::q8_rows16_from_gguf(w.data(), w16.data(), rows, n);
    ops.dot_groups_q8(w16.data(), rows / 16, n, packed.data(), n_tok, y.data(), ldy);
  } else {
    ops.dot_rows(f, w.data(), hm::row_bytes(f, n), rows, n, packed.data(), n_tok, y.data(), ldy);
  }
  const std::vector<double> a = effective_acts(f, isa, x, n);
  for (int t = 0; t < n_tok; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < n; ++k) {
        ref += wv[r * n + k] * a[t * n + k];
        mag += std::fabs(wv[r * n + k] * a[t * n + k]);
      }
      // fp32 sums of exact products (Q8: exact int32 per block): ~1e-6 relative to sum |terms|;
      // one wrong block or lane costs ~1/n_blocks of it.
      if (!(std::fabs(y[t * ldy + r] - ref) <= 1e-4 * mag + 1e-6)) ok = false;
    }
    for (int64_t r = rows; r < ldy; ++r)
      if (y[t * ldy + r] != 7.f) ok = false;
  }
  if (!ok)
    std::cerr << "  " << hm::format_name(f) << " " << hm::cpu::isa_name(isa) << " rows=" << rows
              << " n=" << n << " n_tok=" << n_tok << (groups ? " (groups of 16)" : "")
              << " failed\n";
  return ok;
}

}  // namespace

HM_TEST(cpu_kernels_dot_rows_match_reference_all_isas) {
  uint32_t seed = 1;
  for (auto isa : runnable_isas())
    for (int n_tok : {1, 2, 3, 4, 5, 8, 9, 17, 33})  // 33: AMX token tiles 32 + 16
      for (int64_t rows : {1, 2, 3, 4, 5, 7, 16, 35}) {
        for (int64_t n : {32, 72, 96, 200, 256})  // 96: AMX k steps 2 + 1
          HM_EXPECT(check_dot_rows(isa, WeightFormat::kBF16, rows, n, n_tok, seed++));
        for (int64_t n : {32, 64, 96, 160, 512})
          HM_EXPECT(check_dot_rows(isa, WeightFormat::kQ8_0, rows, n, n_tok, seed++));
      }
}

HM_TEST(cpu_kernels_q8_groups_match_reference_all_isas) {
  uint32_t seed = 5000;
  for (auto isa : runnable_isas())
    for (int n_tok : {1, 2, 3, 4, 5, 8, 9, 17, 33})  // 8+: AMX tiles; 33: token tiles 16 + 16 + 1
      for (int64_t rows : {16, 32, 48})
        for (int64_t n : {32, 64, 96, 160, 512})  // odd and even block counts
          HM_EXPECT(check_dot_rows(isa, WeightFormat::kQ8_0, rows, n, n_tok, seed++, true));
}

// Every ISA's Q8_0 activation pack starts with the token-major QuantBlockQ8 array; the SIMD
// quantisers must give the scalar quantize_block_q8's bytes exactly (ties of x / d at .5, a zero
// block, blocks whose max is negative, sub-ranges [k0, k1) as phase 1 packs them).
HM_TEST(cpu_kernels_q8_activation_pack_matches_scalar_all_isas) {
  const int64_t n = 256, nb = n / hm::kQ8BlockSize;
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int n_tok : {1, 3, 9}) {
    std::vector<float> x(n_tok * n);
    for (auto& v : x) v = nd(rng) * 3.f;
    for (int i = 0; i < 32; ++i) x[32 + i] = 0.f;  // a zero block (d = 0)
    for (int i = 0; i < 32; ++i) x[64 + i] = static_cast<float>(i - 16) + 0.5f;  // ties (d = 1)
    x[64] = 127.f;
    x[127] = -9.f;  // block 3's max magnitude is negative
    std::vector<const float*> src(n_tok);
    for (auto isa : runnable_isas()) {
      const auto& ops = hm::cpu::kernel_ops(isa);
      std::vector<uint8_t> packed(ops.packed_bytes(WeightFormat::kQ8_0, n_tok, n));
      for (int t = 0; t < n_tok; ++t) src[t] = x.data() + t * n;
      ops.pack(WeightFormat::kQ8_0, n_tok, n, 0, 96, src.data(), packed.data());
      for (int t = 0; t < n_tok; ++t) src[t] = x.data() + t * n + 96;
      ops.pack(WeightFormat::kQ8_0, n_tok, n, 96, n, src.data(), packed.data());
      const auto* got = reinterpret_cast<const hm::cpu::QuantBlockQ8*>(packed.data());
      for (int t = 0; t < n_tok; ++t)
        for (int64_t b = 0; b < nb; ++b) {
          hm::cpu::QuantBlockQ8 want;
          hm::cpu::quantize_block_q8(x.data() + t * n + b * 32, &want);
          const auto& g = got[t * nb + b];
          HM_EXPECT(std::memcmp(&g.d, &want.d, 4) == 0 && std::memcmp(g.q, want.q, 32) == 0);
        }
    }
  }
}

HM_TEST(cpu_kernels_q8_rows16_round_trip) {
  std::mt19937 rng(9);
  std::vector<uint8_t> w;
  std::vector<double> wv;
  random_rows(WeightFormat::kQ8_0, 48, 96, rng, w, wv);
  std::vector<uint8_t> g(w.size()), back(w.size());
  hm::q8_rows16_from_gguf(w.data(), g.data(), 48, 96);
  hm::q8_rows16_to_gguf(g.data(), back.data(), 48, 96);
  HM_EXPECT(back == w && g != w);
  HM_EXPECT_THROWS(hm::q8_rows16_from_gguf(w.data(), g.data(), 40, 96), hm::ValueError);
}

HM_TEST(cpu_kernels_prefetch_setting_is_sane) {
  const int b = hm::cpu::prefetch_bytes();
  HM_EXPECT(b >= 0 && b <= (1 << 20));
  HM_EXPECT(b == hm::cpu::prefetch_bytes());  // read once
  for (auto f : {WeightFormat::kBF16, WeightFormat::kQ8_0}) {
    const auto h = hm::cpu::prefetch_hint(f);
    HM_EXPECT(h == hm::cpu::PrefetchHint::kL1 || h == hm::cpu::PrefetchHint::kL2 ||
              h == hm::cpu::PrefetchHint::kNonTemporal);
    HM_EXPECT(h == hm::cpu::prefetch_hint(f));
  }
}
