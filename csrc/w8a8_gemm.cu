// W8A8 GEMM for small M (the batch-1 latency path): int8 activations (per-token scales) x int8 weights
// (per-output-channel scales) on the int8 tensor cores through `mma.sync.m16n8k32`, with split-K so that
// M = 197 fills the GPU, and the fused epilogue of the Triton kernel (kernels/w8a8_linear.py):
//
//   y[m, n] = float(sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n]  (+ bias[n])  (-> gelu)  (+ residual[m, n])
//
// Why: at M = 197 the four ViT-L/16 linears are 4-10 us for every kernel measured (cuBLAS bf16, Triton W8A8),
// against ~1-2 us of tensor-core work: qkv has 4 x 48 output tiles of 64 x 64, fc2 (K = 4096) only 4 x 16, so
// most of the 132 SMs idle or one SM walks a long K loop. Split-K cuts the K loop into `splits` slices run by
// separate CTAs; the last CTA of a tile to finish (an atomic counter per tile) sums the slices' int32 partials
// (exact, so the result does not depend on the split) and runs the epilogue: one launch, no memset, no second
// kernel. The counter is re-armed by that last CTA, so the same buffers serve every launch and graph replay.
//
// Layout: xq (M, K) and wq (N, K) row-major int8 (nn.Linear's layout is the K-major B operand the MMA wants),
// K a multiple of 16 (16-byte cp.async chunks), rows 16-byte aligned. Tiles: BM x BN x 64 through a STAGES-deep
// cp.async pipeline in shared memory with rows padded to 80 bytes (20 words: the fragment reads of a warp hit 32
// distinct banks). Fragments are read as 32-bit words straight from shared memory in the m16n8k32 layout
// (PTX ISA: a0..a3 row g, k 4t..4t+3; a4..a7 row g+8; a8..a15 the same at k + 16; b the same with n = g).
//
// Measured on the H200 (results/h200-gpu-6): correct and sanitizer-clean, but 2.5-3.9x slower than the Triton
// W8A8 kernel at every shape (M = 197 proj: 17.3 us in ncu, one warp per scheduler issuing every 5.8 cycles,
// no eligible warp 83% of the time; split 8: 45.8 us). What it needs next: ldmatrix fragments and precomputed
// cp.async addresses (fewer instructions per MMA), 8 warps and 128-byte K stages, and a split-K reduction that
// does not serialize the last CTA on scalar loads (or stream-K). Since then (not measured yet): the epilogue's
// scales/bias are loaded before the K loop and the split-K reduction's loads are branch-free, batched per slice.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "w8a8_gemm.h"

namespace qvit {

namespace {

constexpr int kBK = 64;         // K bytes per pipeline stage
constexpr int kLd = kBK + 16;   // shared-memory row stride in bytes

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void mma_s8(int* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T, int BM, int BN, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM* WN * 32) w8a8_gemm_kernel(const W8A8Args p) {
  constexpr int kThreads = WM * WN * 32;
  constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
  constexpr int MT = TM / 16, NT = TN / 8;   // m16n8 MMA tiles per warp
  static_assert(TM % 16 == 0 && TN % 8 == 0, "warp tile must be whole m16n8 tiles");
  extern __shared__ __align__(16) int8_t smem[];
  int8_t* sA = smem;                      // STAGES x BM rows of kLd bytes
  int8_t* sB = smem + STAGES * BM * kLd;  // STAGES x BN rows

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int g = lane >> 2, t4 = lane & 3;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM, split = blockIdx.z;
  const int KT = (p.K + kBK - 1) / kBK;
  const int kt0 = split * p.kt_per_split;
  const int nkt = max(min(KT, kt0 + p.kt_per_split) - kt0, 0);

  auto load_stage = [&](int slot, int kt) {
    const int k0 = kt * kBK;
    int8_t* a = sA + slot * BM * kLd;
    int8_t* b = sB + slot * BN * kLd;
#pragma unroll
    for (int c = tid; c < BM * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), kc = (c % (kBK / 16)) * 16;
      const bool ok = m0 + r < p.M && k0 + kc < p.K;
      cp_async16(a + r * kLd + kc, ok ? p.x + (long long)(m0 + r) * p.sx + k0 + kc : p.x, ok);
    }
#pragma unroll
    for (int c = tid; c < BN * (kBK / 16); c += kThreads) {
      const int r = c / (kBK / 16), kc = (c % (kBK / 16)) * 16;
      const bool ok = n0 + r < p.N && k0 + kc < p.K;
      cp_async16(b + r * kLd + kc, ok ? p.w + (long long)(n0 + r) * p.sw + k0 + kc : p.w, ok);
    }
  };

  // the epilogue's per-row and per-column operands, loaded now so that their latency hides under the K loop
  // (clamped indices, no branches: loaded in the epilogue behind `if`s they were ~20 dependent global round
  // trips per thread, about 7 us of proj's 17 us at M = 197 by ncu's issue rate)
  float xs_r[MT][2], ws_c[NT][2], b_c[NT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) xs_r[mt][h] = p.xs[min(m0 + wm * TM + mt * 16 + g + 8 * h, p.M - 1)];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = min(n0 + wn * TN + nt * 8 + 2 * t4 + j, p.N - 1);
      ws_c[nt][j] = p.ws[col];
      b_c[nt][j] = p.bias ? p.bias[col] : 0.f;
    }

  int acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nkt) load_stage(s, kt0 + s);
    cp_async_commit();
  }
  for (int i = 0; i < nkt; ++i) {
    cp_async_wait<STAGES - 2>();  // stage i has landed (for this thread's copies) ...
    __syncthreads();              // ... and for everyone's; the slot refilled below was last read in step i - 1
    const int nxt = i + STAGES - 1;
    if (nxt < nkt) load_stage(nxt % STAGES, kt0 + nxt);
    cp_async_commit();
    const int8_t* a = sA + (i % STAGES) * BM * kLd;
    const int8_t* b = sB + (i % STAGES) * BN * kLd;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 32) {
      unsigned af[MT][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int8_t* pa = a + (wm * TM + mt * 16 + g) * kLd + kk + t4 * 4;
        af[mt][0] = *reinterpret_cast<const unsigned*>(pa);
        af[mt][1] = *reinterpret_cast<const unsigned*>(pa + 8 * kLd);
        af[mt][2] = *reinterpret_cast<const unsigned*>(pa + 16);
        af[mt][3] = *reinterpret_cast<const unsigned*>(pa + 8 * kLd + 16);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int8_t* pb = b + (wn * TN + nt * 8 + g) * kLd + kk + t4 * 4;
        bf[nt][0] = *reinterpret_cast<const unsigned*>(pb);
        bf[nt][1] = *reinterpret_cast<const unsigned*>(pb + 16);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_s8(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();

  // this thread's outputs: (mt, nt, h, j) -> row m0 + wm*TM + mt*16 + g + 8h, column n0 + wn*TN + nt*8 + 2*t4 + j
  if (p.splits > 1) {
    int* mine = p.part + (long long)split * p.M * p.N;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + wm * TM + mt * 16 + g + 8 * h;
          const int col = n0 + wn * TN + nt * 8 + 2 * t4;
          if (row >= p.M) continue;
          if (col < p.N) mine[(long long)row * p.N + col] = acc[mt][nt][2 * h];
          if (col + 1 < p.N) mine[(long long)row * p.N + col + 1] = acc[mt][nt][2 * h + 1];
        }
    __threadfence();  // the partials are visible device-wide before this CTA is counted
    __syncthreads();
    __shared__ unsigned s_last;
    if (tid == 0) {
      unsigned* cnt = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
      const unsigned prev = atomicAdd(cnt, 1u);
      s_last = prev == (unsigned)(p.splits - 1);
      if (s_last) *cnt = 0u;  // every slice has arrived: re-arm for the next launch
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // a slice's loads issued in batches before their adds (clamped indices, no branches): the slices' partials come
    // back together instead of one L2 round trip after another (split 8 measured 45.8 us against 17.3 unsplit
    // with per-element `if`s here); elements outside M x N add clamped neighbours and are never stored
#pragma unroll 1
    for (int s = 0; s < p.splits; ++s) {
      if (s == split) continue;
      const int* other = p.part + (long long)s * p.M * p.N;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // 32-bit offsets (ops.cpp requires M * N < 2^31 for split-K): the compiler keeps them across the slices
          const int roff = min(m0 + wm * TM + mt * 16 + g + 8 * h, p.M - 1) * p.N;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j)
              acc[mt][nt][2 * h + j] += __ldcg(other + (roff + min(n0 + wn * TN + nt * 8 + 2 * t4 + j, p.N - 1)));
        }
    }
  }

  const T* res = static_cast<const T*>(p.res);
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + wm * TM + mt * 16 + g + 8 * h;
      if (row >= p.M) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int col = n0 + wn * TN + nt * 8 + 2 * t4 + j;
          if (col >= p.N) continue;
          float v = static_cast<float>(acc[mt][nt][2 * h + j]) * xs_r[mt][h] * ws_c[nt][j];  // Triton's order
          if (p.bias) v += b_c[nt][j];
          if (p.gelu) v = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
          if (res) v += load_f(res + (long long)row * p.sr + col);
          store_f(y + (long long)row * p.sy + col, v);
        }
    }
}

// the tile shapes offered to the autotuner (kernels/w8a8_cuda.py CONFIGS mirrors this list)
template <typename T, int BM, int BN, int WM, int WN, int STAGES>
cudaError_t launch(const W8A8Args& a, cudaStream_t stream) {
  const dim3 grid((a.N + BN - 1) / BN, (a.M + BM - 1) / BM, a.splits);
  const size_t smem = (size_t)STAGES * (BM + BN) * kLd;  // <= 48 KiB: no opt-in attribute needed
  static_assert((size_t)STAGES * (BM + BN) * kLd <= 48 * 1024, "shared memory over the default limit");
  w8a8_gemm_kernel<T, BM, BN, WM, WN, STAGES><<<grid, WM * WN * 32, smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(int cfg, const W8A8Args& a, cudaStream_t stream) {
  switch (cfg) {
    case 0: return launch<T, 64, 64, 2, 2, 4>(a, stream);
    case 1: return launch<T, 64, 128, 2, 2, 3>(a, stream);
    case 2: return launch<T, 32, 128, 1, 4, 3>(a, stream);
    case 3: return launch<T, 32, 64, 1, 4, 4>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int w8a8_gemm_num_configs() { return 4; }
int w8a8_gemm_tile(int cfg, int* bm, int* bn) {
  static const int t[4][2] = {{64, 64}, {64, 128}, {32, 128}, {32, 64}};
  if (cfg < 0 || cfg >= 4) return 1;
  *bm = t[cfg][0];
  *bn = t[cfg][1];
  return 0;
}

cudaError_t w8a8_gemm_launch(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream) {
  switch (dtype) {
    case 0: return dispatch<__half>(cfg, a, stream);
    case 1: return dispatch<__nv_bfloat16>(cfg, a, stream);
    case 2: return dispatch<float>(cfg, a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qvit
