// LayerNorm fused with dynamic per-token int8 quantization, one warp per row (up to 4 for wide rows).
//
//   h = (x - mean) / sqrt(var + eps) * weight + bias   (float32; plain per-token quantizer if weight is undefined)
//   scale[m] = max(amax|h| / 127, FLT_MIN);  q = clamp(rint(h / scale), -127, 127)
//
// x (M, K) half / bfloat16 / float, K contiguous, rows 16-byte aligned; q int8 (M, K); scale float (M,).
// Each lane keeps its slice of the row in registers (16-byte vector loads, at most 4 per lane: rows wider than
// 32 x 4 vectors are split over 2 or 4 warps), so x is read once and q written once: the 3 bytes per element
// (fp16 in) that bound this op. The quantizer multiplies by 1 / scale and divides only near a tie (quant_rn):
// a division per element cost more issue slots than the memory traffic left (2.3-2.6 TB/s at K = 1024,
// 1.6 at K = 4096 against a 4.15 TB/s copy, results/h200-gpu-4).
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

// round(v / scale) as IEEE division then round-half-even would give it (the definition the reference and every
// qvit kernel follow), without a division per element: v * (1 / scale) is within ~2^-23 relative of v / scale,
// so for |v / scale| <= 128 the two can only round to different integers when the quotient lies within
// 1.6e-5 of a tie (x.5); those rare elements (about 2e-4 of them) take the exact division.
__device__ __forceinline__ int quant_rn(float v, float scale, float inv) {
  const float t = v * inv;
  float r = rintf(t);
  if (fabsf(fabsf(t - r) - 0.5f) < 1e-4f) r = rintf(__fdiv_rn(v, scale));
  return max(-127, min(127, (int)r));
}

// One row per WPR warps (WPR = 1 for K up to 32 * VEC * MAXV, more for wider rows, so that a lane never
// holds more than MAXV vectors: 32 values at MAXV = 4, no spills); VEC elements of T per 16-byte load.
template <typename T, int MAXV, int WPR>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
layernorm_quant_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                       int8_t* __restrict__ q, float* __restrict__ s, int64_t M, int K, int64_t stride_x,
                       float eps, bool norm) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int ROWS = kWarpsPerBlock / WPR;
  __shared__ float red[kWarpsPerBlock];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rloc = warp / WPR;
  const int64_t row = (int64_t)blockIdx.x * ROWS + rloc;
  const bool valid = row < M;  // no early return: the warps of a row meet at __syncthreads when WPR > 1
  const int nvec = K / VEC;
  const int t0 = (warp % WPR) * 32 + lane;  // this lane's first vector; stride 32 * WPR
  // the row's total of x over its WPR warps (all of the block's warps take part when WPR > 1)
  auto row_reduce = [&](float x, bool is_max) -> float {
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
  float v[MAXV][VEC];
  const T* xr = x + (valid ? row : 0) * stride_x;
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = i * 32 * WPR + t0;
    if (valid && c < nvec) {
      uint4 raw = *reinterpret_cast<const uint4*>(xr + c * VEC);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < VEC; ++j) { v[i][j] = to_f<T>(e[j]); sum += v[i][j]; }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[i][j] = 0.f;
    }
  }
  if (norm) {
    const float mean = row_reduce(sum, false) / K;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (i * 32 * WPR + t0 < nvec) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) { v[i][j] -= mean; sq += v[i][j] * v[i][j]; }
      }
    }
    const float rstd = 1.f / sqrtf(row_reduce(sq, false) / K + eps);
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
  const float scale = fmaxf(row_reduce(amax, true) / 127.f, FLT_MIN);
  const float inv = __frcp_rn(scale);
  if (!valid) return;  // past the last __syncthreads
  int8_t* qr = q + row * (int64_t)K;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = i * 32 * WPR + t0;
    if (c < nvec) {
      int8_t out[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) out[j] = (int8_t)quant_rn(v[i][j], scale, inv);
      if constexpr (VEC == 8) {
        *reinterpret_cast<uint2*>(qr + c * VEC) = *reinterpret_cast<uint2*>(out);
      } else {
        *reinterpret_cast<uint32_t*>(qr + c * VEC) = *reinterpret_cast<uint32_t*>(out);
      }
    }
  }
  if (lane == 0 && warp % WPR == 0) s[row] = scale;
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
