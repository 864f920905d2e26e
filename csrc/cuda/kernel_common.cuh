// Small device helpers shared by the expert kernels: bf16/fp16 unpacking, warp sums, SiLU,
// loading a row segment of any 2-byte alignment into shared memory, Q8_0 block dot products,
// exact int8 -> fp32 conversion without I2F, programmatic-dependent-launch controls.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace hm::cuda::dev {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float silu(float g) {
  return g / (1.0f + __expf(-g));
}

// 8 bf16 in a uint4 times 8 bf16 in a uint4, summed in fp32.
__device__ __forceinline__ float dot8_bf16(const uint4& a, const uint4& b) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(pa[i]);
    const float2 fb = __bfloat1622float2(pb[i]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

// 8 bf16 weights times 8 fp32 values (two float4).
__device__ __forceinline__ float dot8_bf16_f32(const uint4& a, const float4& b0, const float4& b1) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const float2 f0 = __bfloat1622float2(pa[0]), f1 = __bfloat1622float2(pa[1]);
  const float2 f2 = __bfloat1622float2(pa[2]), f3 = __bfloat1622float2(pa[3]);
  float s = f0.x * b0.x;
  s = fmaf(f0.y, b0.y, s);
  s = fmaf(f1.x, b0.z, s);
  s = fmaf(f1.y, b0.w, s);
  s = fmaf(f2.x, b1.x, s);
  s = fmaf(f2.y, b1.y, s);
  s = fmaf(f3.x, b1.z, s);
  s = fmaf(f3.y, b1.w, s);
  return s;
}

// Streamed weight load: read once, do not keep in L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  return __ldcs(p);
}

// A warp copies nbytes (even) from global src into shared dst: 16-byte loads when src, dst and
// nbytes allow it (Q8_0 rows of a multiple of 256 values), 2-byte loads otherwise.
__device__ __forceinline__ void warp_copy_to_shared(uint8_t* dst, const uint8_t* src, int nbytes,
                                                    int lane) {
  if (((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
        static_cast<uintptr_t>(nbytes)) &
       15u) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int c = lane; c < nbytes / 16; c += 32) d[c] = ld_stream(s + c);
  } else {
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
    uint16_t* d = reinterpret_cast<uint16_t*>(dst);
    for (int c = lane; c < nbytes / 2; c += 32) d[c] = s[c];
  }
}

// One Q8_0 block (34 bytes at a 2-byte aligned address, here in shared memory): its fp16 scale,
// then the dot product of its 32 int8 values (read as 2-byte pairs) with 32 activations.
__device__ __forceinline__ float q8_scale(const uint8_t* blk) {
  return __half2float(*reinterpret_cast<const __half*>(blk));
}

// sum_i q[i] * x[i] with x 32 bf16 at a 16-byte aligned global address.
__device__ __forceinline__ float q8_dot_bf16(const uint8_t* blk, const __nv_bfloat16* x) {
  const uint16_t* q16 = reinterpret_cast<const uint16_t*>(blk + 2);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const uint4 xx = __ldg(xv + c);
    const __nv_bfloat162* px = reinterpret_cast<const __nv_bfloat162*>(&xx);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint16_t qq = q16[c * 4 + j];
      const float2 f = __bfloat1622float2(px[j]);
      s = fmaf(static_cast<float>(static_cast<int8_t>(qq & 0xff)), f.x, s);
      s = fmaf(static_cast<float>(static_cast<int8_t>(qq >> 8)), f.y, s);
    }
  }
  return s;
}

// sum_i q[i] * h[i] with h 32 fp32 at a 16-byte aligned address.
__device__ __forceinline__ float q8_dot_f32(const uint8_t* blk, const float* h) {
  const uint16_t* q16 = reinterpret_cast<const uint16_t*>(blk + 2);
  const float4* hv = reinterpret_cast<const float4*>(h);
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const float4 f = hv[c];
    const uint16_t q0 = q16[c * 2], q1 = q16[c * 2 + 1];
    s = fmaf(static_cast<float>(static_cast<int8_t>(q0 & 0xff)), f.x, s);
    s = fmaf(static_cast<float>(static_cast<int8_t>(q0 >> 8)), f.y, s);
    s = fmaf(static_cast<float>(static_cast<int8_t>(q1 & 0xff)), f.z, s);
    s = fmaf(static_cast<float>(static_cast<int8_t>(q1 >> 8)), f.w, s);
  }
  return s;
}

// ---- decode helpers (decode_kernels.cu) ----

// Programmatic dependent launch (sm_90+): the primary kernel lets its dependent kernel start
// early; the dependent waits for the primary's completion (and its memory) before reading what
// the primary wrote. Both are no-ops when the launch is not programmatic, and compile to nothing
// below sm_90 (where the host never asks for such a launch).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// bf16 pair packed in a word (element 0 in the low half) -> two exact floats.
__device__ __forceinline__ float bf16_lo(uint32_t w) {
  return __uint_as_float(w << 16);
}
__device__ __forceinline__ float bf16_hi(uint32_t w) {
  return __uint_as_float(w & 0xffff0000u);
}

// Four int8 in a word -> four exact floats without I2F (a quarter-rate instruction): flip the sign
// bits (q + 128 in [0, 255]), put each byte under the exponent of 2^23 (float 2^23 + q + 128) and
// subtract 2^23 + 128. PRMT + FADD per value.
template <int k>
__device__ __forceinline__ float i8_to_f32(uint32_t biased) {
  return __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7440u | k)) - 8388736.0f;
}

// sum_j q[j] * x[j] for 8 int8 (two words, element 0 in the lowest byte) and 8 bf16 (a uint4).
__device__ __forceinline__ float q8_dot8_bf16(uint32_t q0, uint32_t q1, const uint4& x) {
  const uint32_t a = q0 ^ 0x80808080u, b = q1 ^ 0x80808080u;
  float s = i8_to_f32<0>(a) * bf16_lo(x.x);
  s = fmaf(i8_to_f32<1>(a), bf16_hi(x.x), s);
  s = fmaf(i8_to_f32<2>(a), bf16_lo(x.y), s);
  s = fmaf(i8_to_f32<3>(a), bf16_hi(x.y), s);
  s = fmaf(i8_to_f32<0>(b), bf16_lo(x.z), s);
  s = fmaf(i8_to_f32<1>(b), bf16_hi(x.z), s);
  s = fmaf(i8_to_f32<2>(b), bf16_lo(x.w), s);
  s = fmaf(i8_to_f32<3>(b), bf16_hi(x.w), s);
  return s;
}

// sum_j q[j] * h[j] for 8 int8 (two words) and 8 fp32 (two float4).
__device__ __forceinline__ float q8_dot8_f32(uint32_t q0, uint32_t q1, const float4& h0,
                                             const float4& h1) {
  const uint32_t a = q0 ^ 0x80808080u, b = q1 ^ 0x80808080u;
  float s = i8_to_f32<0>(a) * h0.x;
  s = fmaf(i8_to_f32<1>(a), h0.y, s);
  s = fmaf(i8_to_f32<2>(a), h0.z, s);
  s = fmaf(i8_to_f32<3>(a), h0.w, s);
  s = fmaf(i8_to_f32<0>(b), h1.x, s);
  s = fmaf(i8_to_f32<1>(b), h1.y, s);
  s = fmaf(i8_to_f32<2>(b), h1.z, s);
  s = fmaf(i8_to_f32<3>(b), h1.w, s);
  return s;
}

// One Q8_0 block in SHARED memory at a 2-byte aligned address: its 32 int8 as 8 words (q[j] holds
// values 4j..4j+3) and its scale. The quants start 2 bytes after the block, i.e. at an address
// that is 0 or 2 mod 4: read 9 aligned words and funnel-shift by 0 or 16 bits. May read up to 4
// bytes past the block's end (callers pad their staging buffers by 16 bytes).
__device__ __forceinline__ float q8_load_block_smem(const uint8_t* blk, uint32_t (&q)[8]) {
  // Pointer arithmetic (not an integer round trip) keeps the shared address space visible to the
  // compiler, so these are LDS, not generic loads.
  const int mis = static_cast<int>(reinterpret_cast<uintptr_t>(blk + 2) & 3u);  // 0 or 2
  const uint32_t* w = reinterpret_cast<const uint32_t*>(blk + 2 - mis);
  const uint32_t sh = static_cast<uint32_t>(mis) * 8u;  // 0 or 16
  uint32_t r[9];
#pragma unroll
  for (int j = 0; j < 9; ++j) r[j] = w[j];
#pragma unroll
  for (int j = 0; j < 8; ++j) q[j] = __funnelshift_r(r[j], r[j + 1], sh);
  return __half2float(*reinterpret_cast<const __half*>(blk));
}

__device__ __forceinline__ void add_out(float* out, int64_t i, float v) {
  out[i] += v;
}
__device__ __forceinline__ void add_out(__nv_bfloat16* out, int64_t i, float v) {
  out[i] = __float2bfloat16(__bfloat162float(out[i]) + v);
}

}  // namespace hm::cuda::dev
