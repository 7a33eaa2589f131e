// LayerNorm fused with dynamic per-token int8 quantization, one warp per row (up to 4 for wide rows).
//
//   h = (x - mean) / sqrt(var + eps) * weight + bias   (float32; plain per-token quantizer if weight is undefined)
//   scale[m] = max(amax|h| / 127, FLT_MIN);  q = clamp(rint(h / scale), -127, 127)
//
// x (M, K) half / bfloat16 / float, K contiguous, rows 16-byte aligned; q int8 (M, K); scale float (M,).
// Each lane keeps its slice of the row in registers (16-byte vector loads, at most 4 per lane: rows wider than
// 32 x 4 vectors are split over 2 or 4 warps), so x is read once and q written once: the 3 bytes per element
// (fp16 in) that bound this op. It was bound by issued instructions, not bytes (results/h200-gpu-4/-5: 2.3-2.6
// TB/s at K = 1024 against a 4.15 TB/s copy), so the quantizer is branch-free and short (quant_bits: four
// instructions per element and three byte permutes per four, against ~12 with the near-tie branch it replaced;
// sm_90a SASS 1,696 -> 1,016 per thread at fp16, K = 1024): 3.22 / 3.41 / 3.27 TB/s, 77-82% of the copy
// (results/h200-gpu-17 call 2). A one-wave variant loading the next row before this row's reductions measured
// slower (2.91 / 3.06 / 3.26 TB/s, same run) and was removed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

namespace qvit {
namespace {

constexpr int kWarpsPerBlock = 4;

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// round(v / scale) as IEEE division then round-half-even give it (the definition the reference and every qvit
// kernel follow), without a division per element, as the low byte of a float32:
//  - q0 = v * inv with inv = 1 / scale correctly rounded, then one correction with the exact remainder,
//    q = fma(fma(-q0, scale, v), inv, q0): the correctly rounded quotient (Markstein), barring over/underflow;
//  - q + 1.5 * 2^23 rounds it to an integer, ties to even (the float adder's own rounding; the sum stays in
//    [2^23, 2^24), where the unit in the last place is 1), and leaves that integer n in the mantissa:
//    bits = 0x4B400000 + n, whose low byte is n as an int8 (two's complement mod 256).
// No clamp: scale >= amax / 127 rounded, so |v / scale| <= 127 * (1 + 2^-23) and the rounded quotient is within
// [-127, 127] for every finite row (with scale = FLT_MIN, |v| < 127 * FLT_MIN gives the same).
__device__ __forceinline__ uint32_t quant_bits(float v, float scale, float inv) {
  const float q0 = v * inv;
  return __float_as_uint(__fadd_rn(fmaf(fmaf(-q0, scale, v), inv, q0), 12582912.f));
}
// the low bytes of four quant_bits words, a in the lowest byte
__device__ __forceinline__ uint32_t pack4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// A row's 16-byte vectors for this lane (vector i at i * 32 * WPR + t0; past the row, or an invalid row: zeros,
// which are 0.0 in every T)
template <typename T, int MAXV, int WPR>
__device__ __forceinline__ void load_row(uint4 (&raw)[MAXV], const T* xr, int nvec, int t0, bool valid) {
  constexpr int VEC = 16 / sizeof(T);
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = i * 32 * WPR + t0;
    raw[i] = (valid && c < nvec) ? *reinterpret_cast<const uint4*>(xr + c * VEC) : make_uint4(0, 0, 0, 0);
  }
}

// The rest of a row once its vectors are loaded: LayerNorm (norm), the scale, the codes and the scale stored.
// reduce(v, is_max): the row's total over its WPR warps. Every lane of the row's warps calls it (a barrier inside
// when WPR > 1); only valid rows store.
template <typename T, int MAXV, int WPR, typename Reduce>
__device__ __forceinline__ void row_body(const uint4 (&raw)[MAXV], const Reduce& reduce, const T* __restrict__ w,
                                         const T* __restrict__ b, int8_t* __restrict__ qr, float* __restrict__ s_row,
                                         int nvec, int K, int t0, float eps, bool norm, bool valid, bool owner) {
  constexpr int VEC = 16 / sizeof(T);
  float v[MAXV][VEC];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const T* e = reinterpret_cast<const T*>(&raw[i]);
#pragma unroll
    for (int j = 0; j < VEC; ++j) { v[i][j] = to_f<T>(e[j]); sum += v[i][j]; }
  }
  if (norm) {
    const float mean = reduce(sum, false) / K;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (i * 32 * WPR + t0 < nvec) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) { v[i][j] -= mean; sq += v[i][j] * v[i][j]; }
      }
    }
    const float rstd = 1.f / sqrtf(reduce(sq, false) / K + eps);
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int c = i * 32 * WPR + t0;
      if (c < nvec) {
        uint4 rw = *reinterpret_cast<const uint4*>(w + c * VEC);
        const T* we = reinterpret_cast<const T*>(&rw);
        if (b != nullptr) {
          uint4 rb = *reinterpret_cast<const uint4*>(b + c * VEC);
          const T* be = reinterpret_cast<const T*>(&rb);
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[i][j] = v[i][j] * rstd * to_f<T>(we[j]) + to_f<T>(be[j]);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[i][j] = v[i][j] * rstd * to_f<T>(we[j]);
        }
      }
    }
  }
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i)
    if (i * 32 * WPR + t0 < nvec)
#pragma unroll
      for (int j = 0; j < VEC; ++j) amax = fmaxf(amax, fabsf(v[i][j]));
  const float scale = fmaxf(reduce(amax, true) / 127.f, FLT_MIN);
  const float inv = __frcp_rn(scale);
  if (!valid) return;  // past the last barrier of reduce
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = i * 32 * WPR + t0;
    if (c < nvec) {
      uint32_t w8[VEC / 4];
#pragma unroll
      for (int j = 0; j < VEC / 4; ++j)
        w8[j] = pack4(quant_bits(v[i][4 * j], scale, inv), quant_bits(v[i][4 * j + 1], scale, inv),
                      quant_bits(v[i][4 * j + 2], scale, inv), quant_bits(v[i][4 * j + 3], scale, inv));
      if constexpr (VEC == 8) {
        *reinterpret_cast<uint2*>(qr + c * VEC) = make_uint2(w8[0], w8[1]);
      } else {
        *reinterpret_cast<uint32_t*>(qr + c * VEC) = w8[0];
      }
    }
  }
  if (owner) *s_row = scale;
}

// One row per WPR warps (WPR = 1 for K up to 32 * VEC * MAXV, more for wider rows, so that a lane never
// holds more than MAXV vectors: 32 values at MAXV = 4, no spills); VEC elements of T per 16-byte load.
template <typename T, int MAXV, int WPR>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
layernorm_quant_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                       int8_t* __restrict__ q, float* __restrict__ s, int64_t M, int K, int64_t stride_x,
                       float eps, bool norm) {
  constexpr int ROWS = kWarpsPerBlock / WPR;
  __shared__ float red[kWarpsPerBlock];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rloc = warp / WPR;
  const int64_t row = (int64_t)blockIdx.x * ROWS + rloc;
  const bool valid = row < M;  // no early return: the warps of a row meet at __syncthreads when WPR > 1
  const int t0 = (warp % WPR) * 32 + lane;  // this lane's first vector; stride 32 * WPR
  // the row's total of x over its WPR warps (all of the block's warps take part when WPR > 1)
  auto reduce = [&](float x, bool is_max) -> float {
    x = is_max ? warp_max(x) : warp_sum(x);
    if constexpr (WPR > 1) {
      __syncthreads();
      if (lane == 0) red[warp] = x;
      __syncthreads();
      x = red[rloc * WPR];
#pragma unroll
      for (int j = 1; j < WPR; ++j) x = is_max ? fmaxf(x, red[rloc * WPR + j]) : x + red[rloc * WPR + j];
    }
    return x;
  };
  uint4 raw[MAXV];
  load_row<T, MAXV, WPR>(raw, x + (valid ? row : 0) * stride_x, K / (16 / (int)sizeof(T)), t0, valid);
  row_body<T, MAXV, WPR>(raw, reduce, w, b, q + (valid ? row : 0) * (int64_t)K, s + (valid ? row : 0),
                         K / (16 / (int)sizeof(T)), K, t0, eps, norm, valid, lane == 0 && warp % WPR == 0);
}

template <typename T>
cudaError_t launch(const void* x, const void* w, const void* b, int8_t* q, float* s, int64_t M, int K,
                   int64_t stride_x, float eps, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const int per_lane = (K / VEC + 31) / 32;  // vectors per lane with one warp per row
  const T* xp = reinterpret_cast<const T*>(x);
  const T* wp = reinterpret_cast<const T*>(w);
  const T* bp = reinterpret_cast<const T*>(b);
  const dim3 block(kWarpsPerBlock * 32);
#define QVIT_LNQ(WPR)                                                                                  \
  layernorm_quant_kernel<T, 4, WPR><<<dim3((unsigned)((M + kWarpsPerBlock / WPR - 1) / (kWarpsPerBlock / WPR))), \
                                      block, 0, stream>>>(xp, wp, bp, q, s, M, K, stride_x, eps, w != nullptr)
  if (per_lane <= 4) QVIT_LNQ(1);
  else if (per_lane <= 8) QVIT_LNQ(2);
  else QVIT_LNQ(4);
#undef QVIT_LNQ
  return cudaGetLastError();
}

}  // namespace

// No exceptions are thrown from this file (nvcc-compiled host code): ops.cpp validates the inputs
// and turns the returned cudaError_t into a Python error naming the op.
cudaError_t layernorm_quant_launch(int dtype, const void* x, const void* w, const void* b, int8_t* q, float* s,
                                   int64_t M, int K, int64_t stride_x, float eps, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch<__half>(x, w, b, q, s, M, K, stride_x, eps, stream);
    case 1: return launch<__nv_bfloat16>(x, w, b, q, s, M, K, stride_x, eps, stream);
    case 2: return launch<float>(x, w, b, q, s, M, K, stride_x, eps, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qvit
