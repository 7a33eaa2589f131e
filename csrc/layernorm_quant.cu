// LayerNorm fused with dynamic per-token int8 quantization, one warp per row.
//
//   h = (x - mean) / sqrt(var + eps) * weight + bias   (float32; plain per-token quantizer if weight is undefined)
//   scale[m] = max(amax|h| / 127, FLT_MIN);  q = clamp(rint(h / scale), -127, 127)
//
// x (M, K) half / bfloat16 / float, K contiguous, rows 16-byte aligned; q int8 (M, K); scale float (M,).
// Each lane keeps its slice of the row in registers (16-byte vector loads), so x is read once and q
// written once: the 3 bytes per element (fp16 in) that bound this op.
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

// VEC elements of T per 16-byte load; MAXV loads per lane at most (K <= 32 * VEC * MAXV).
template <typename T, int MAXV>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
layernorm_quant_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                       int8_t* __restrict__ q, float* __restrict__ s, int64_t M, int K, int64_t stride_x,
                       float eps, bool norm) {
  constexpr int VEC = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= M) return;
  const int nvec = K / VEC;
  float v[MAXV][VEC];
  const T* xr = x + row * stride_x;
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = i * 32 + lane;
    if (c < nvec) {
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
    const float mean = warp_sum(sum) / K;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (i * 32 + lane < nvec) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) { v[i][j] -= mean; sq += v[i][j] * v[i][j]; }
      }
    }
    const float rstd = 1.f / sqrtf(warp_sum(sq) / K + eps);
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int c = i * 32 + lane;
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
#pragma unroll
    for (int j = 0; j < VEC; ++j) amax = fmaxf(amax, fabsf(v[i][j]));
  const float scale = fmaxf(warp_max(amax) / 127.f, FLT_MIN);
  int8_t* qr = q + row * (int64_t)K;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = i * 32 + lane;
    if (c < nvec) {
      int8_t out[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        int r = __float2int_rn(__fdiv_rn(v[i][j], scale));
        out[j] = (int8_t)max(-127, min(127, r));
      }
      if constexpr (VEC == 8) {
        *reinterpret_cast<uint2*>(qr + c * VEC) = *reinterpret_cast<uint2*>(out);
      } else {
        *reinterpret_cast<uint32_t*>(qr + c * VEC) = *reinterpret_cast<uint32_t*>(out);
      }
    }
  }
  if (lane == 0) s[row] = scale;
}

template <typename T>
cudaError_t launch(const void* x, const void* w, const void* b, int8_t* q, float* s, int64_t M, int K,
                   int64_t stride_x, float eps, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const int per_lane = (K / VEC + 31) / 32;
  const dim3 grid((unsigned)((M + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(kWarpsPerBlock * 32);
  const T* xp = reinterpret_cast<const T*>(x);
  const T* wp = reinterpret_cast<const T*>(w);
  const T* bp = reinterpret_cast<const T*>(b);
#define QVIT_LNQ(MV) layernorm_quant_kernel<T, MV><<<grid, block, 0, stream>>>(xp, wp, bp, q, s, M, K, stride_x, eps, w != nullptr)
  if (per_lane <= 4) QVIT_LNQ(4);
  else if (per_lane <= 8) QVIT_LNQ(8);
  else QVIT_LNQ(16);
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
