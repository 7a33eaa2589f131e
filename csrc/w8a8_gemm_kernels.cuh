#pragma once
// W8A8 GEMM for small M (the batch-1 latency path): int8 activations (per-token scales) x int8 weights
// (per-output-channel scales) on the int8 tensor cores through `mma.sync.m16n8k32`, with split-K so that
// M = 197 fills the GPU, and the fused epilogue of the Triton kernel (kernels/w8a8_linear.py):
//
//   y[m, n] = float(sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n]  (+ bias[n])  (-> gelu)  (+ residual[m, n])
//
// Why: at M = 197 the four ViT-L/16 linears are 4-10 us for every kernel measured (cuBLAS bf16, Triton W8A8),
// against ~1-2 us of tensor-core work: proj has 4 x 16 output tiles of 64 x 64, fc2 (K = 4096) the same, so most
// of the 132 SMs idle or one SM walks a long K loop. Split-K cuts the K loop into `splits` slices run by separate
// CTAs. Each slice adds its int32 partial tile into one (M, N) int32 workspace with fire-and-forget atomic adds
// (integer addition: exact and order-independent, so every tile shape and split gives the same bits); the last
// CTA of a tile to arrive (an atomic counter per tile) reads the sums, zeroes the workspace and the counter for
// the next launch, and runs the epilogue: one launch, no memset, no second kernel, graph-replay safe.
//
// Layout: xq (M, K) and wq (N, K) row-major int8 (nn.Linear's layout is the K-major B operand the MMA wants),
// K a multiple of 16 (16-byte cp.async chunks), rows 16-byte aligned. Tiles: BM x BN x BK through a STAGES-deep
// cp.async pipeline in shared memory, rows padded by 16 bytes (a stride of BK + 16 bytes puts the 8 rows of
// every ldmatrix phase on distinct banks for BK = 64, 128, 256). Fragments come from `ldmatrix.x4`: for int8
// m16n8k32 the A fragment's four registers are exactly four 8 x 16-byte matrices (rows 0-7 / 8-15 x k 0-15 /
// 16-31) and one x4 load gives the B fragments of two n8 tiles. Each thread's cp.async sources and shared
// destinations are computed once; a stage costs its copies, a bounds compare per copy and one barrier.
//
// On sm_90 the warpgroup-MMA kernel below (w8a8_wgmma_kernel) replaces this one; this one stays for sm_80/sm_89.
//
// History (NOTES.md sessions 6-7, results/h200-gpu-6, h200-gpu-7; NVIDIA H200, M = 197, graphed medians):
// - v1 (64-byte K stages, fragments as 32-bit shared loads, per-copy address arithmetic, partial slices summed by
//   the last CTA): 14.8 / 20.0 / 20.1 / 25.5 us for qkv / proj / fc1 / fc2 (Triton 5.4 / 5.2 / 5.2 / 8.6); ncu:
//   one warp per scheduler issuing every 5.8 cycles, ~290 instructions per 16 MMAs; split 8: 45.8 us.
// - v2 (this kernel: ldmatrix, 128/256-byte stages, atomic split-K): 10.1 / 8.7 / 11.2 / 11.3 us.
// - wgmma (sm_90a, one warpgroup): 6.8 / 16.6 (a mis-tuned pick: eager event timing) / 10.5 / 11.3 us; + the
//   epilogue staged through shared memory (the unrolled one cost 1.5 "no instruction" stall cycles per issue,
//   instruction-cache misses) and graph-timed tuning: 6.3 / 4.6 / 7.2 / 9.2; + pointers advanced per stage and
//   split-K in clusters: 6.4 / 4.8 / 7.1 / 7.7 (fc2 now faster than Triton 8.7 and cuBLAS 10.1); + MMAs
//   overlapped with the next step: 6.4 / 4.8 / 7.0 / 7.5. Against the same 64 x 64 tile, Triton's kernel still
//   takes ~25% less time per CTA at qkv (ncu, cold L2: 6.5 vs 8.6-8.8 us).
// - H100, session 20 (results/h200-gpu-20): 256-byte K stages are the tuner's first choice at all four shapes (6.5 /
//   4.7 / 7.1 / 8.1 us against Triton's 5.1 / 3.8 / 5.2 / 7.8); the TMA-fed configs are slower than the cp.async one of
//   the same tile; ncu: 9-21% of the stall samples are instruction-cache misses (these kernels are 1,856-2,376 SASS
//   instructions: the epilogue branches at run time), 0-7% for Triton's.
// - H100, session 21 (results/h200-gpu-21): epilogues fixed at compile time (kEpi*, csrc/w8a8_gemm.h) and the fill
//   loop rolled: 520-1,440 instructions, "no instruction" 2-9% of the stalls; 5.7 / 3.8 / 6.0 / 7.2 us with the bias
//   epilogue (run-time epilogue 6.4 / 4.4 / 7.0 / 7.8; Triton 5.1 / 4.2 / 5.2 / 7.7; cuBLAS bf16 5.3 / 4.4 / 6.8 /
//   11.0).
// - H100, session 24 (results/h200-gpu-24): the K step trimmed (MMA descriptors built once and warp-uniform, row
//   predicates skipped for tiles inside M and N): 424-688 instructions with the bias epilogue; 5.3 / 3.6 / 5.7 / 6.5 us
//   (Triton 5.1 / 3.7 / 5.2 / 7.7; cuBLAS bf16 5.3 / 4.5 / 6.9 / 9.5; proj and fc2 + residual 3.7 / 6.8 against 3.9 /
//   7.8).
// - H100, session 25 (results/h200-gpu-25): the epilogue's scales and bias loaded into registers before the pipeline
//   fill; GELU by Abramowitz & Stegun's erf (as Triton's): 5.0-5.1 / 3.4 / 5.1-5.5 / 6.3-6.8 us with the bias epilogue
//   (Triton 5.1-5.2 / 3.8 / 5.2-5.3 / 7.7-7.8); fc1 + GELU 5.7-6.0 against 5.7.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cooperative_groups.h>
#include <cuda.h>  // CUtensorMap (the TMA configs' operand descriptors; encoded through the runtime's driver entry point)
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <type_traits>

#include "w8a8_gemm.h"

namespace qvit {

namespace {

constexpr int kSplitUnit = 64;  // K bytes: split-K slices are whole multiples of this (ops.cpp, w8a8_cuda.py)

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async8(unsigned dst, const void* src, bool pred) {  // (8-byte aligned source)
  const int n = pred ? 8 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma_s8(int* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// GELU's erf form, 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x + 0.5 |x| erf(|x| / sqrt 2), with erf of the non-negative
// argument by Abramowitz & Stegun 7.1.26 as the Triton kernel's _gelu_erf computes it: erf(z) = 1 - t (a1 + t (a2 +
// ... + t a5)) e^(-z^2), t = 1 / (1 + p z), |error| <= 1.5e-7, the reciprocal and exp2 single MUFU instructions
// (rcp / ex2 .approx.ftz; 1 + p z >= 1 and the exponent <= 0, the ranges where they need no fix-up). erff costs
// ~38 instructions per element, this ~19. Every step an explicit __fmaf_rn / __fmul_rn: the fixed and run-time
// epilogues (separate instantiations) keep the same bits.
__device__ __forceinline__ float gelu_erf(float x) {
  const float z = __fmul_rn(fabsf(x), 0.7071067811865476f);
  float t, e;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(__fmaf_rn(0.3275911f, z, 1.0f)));
  float q = __fmaf_rn(t, 1.061405429f, -1.453152027f);
  q = __fmaf_rn(t, q, 1.421413741f);
  q = __fmaf_rn(t, q, -0.284496736f);
  q = __fmul_rn(t, __fmaf_rn(t, q, 0.254829592f));
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fmul_rn(z, __fmul_rn(z, -1.4426950408889634f))));
  const float h = __fmul_rn(0.5f, x);
  return __fmaf_rn(fabsf(h), __fmaf_rn(-q, e, 1.0f), h);
}
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float2 load_f2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load_f2(const __half* p) { return __half22float2(*reinterpret_cast<const __half2*>(p)); }
__device__ __forceinline__ float2 load_f2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_f2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store_f2(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __halves2half2(__float2half_rn(a), __float2half_rn(b));
}
__device__ __forceinline__ void store_f2(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __halves2bfloat162(__float2bfloat16_rn(a), __float2bfloat16_rn(b));
}

// the epilogue's per-row and per-column operands of one thread's fragment, loaded before the K loop so that
// their latency hides under it (clamped indices, no branches). Fragment layout (mma.sync m16n8 and wgmma m64nN
// alike): (mt, nt, h, j) -> row r0 + mt * 16 + 8h, column c0 + nt * 8 + j, with r0 = the thread's first row
// (tile row + warp row + lane / 4) and c0 its first column (tile column + warp column + 2 * (lane % 4)).
template <int MT, int NT>
struct EpiOperands {
  float xs[MT][2], ws[NT][2], b[NT][2];
};

template <int MT, int NT>
__device__ __forceinline__ void load_epi(const W8A8Args& p, int r0, int c0, EpiOperands<MT, NT>& e) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) e.xs[mt][h] = p.xs[min(r0 + mt * 16 + 8 * h, p.M - 1)];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = min(c0 + nt * 8 + j, p.N - 1);
      e.ws[nt][j] = p.ws[col];
      e.b[nt][j] = p.bias ? p.bias[col] : 0.f;
    }
}

// split-K through the workspace: after this CTA's atomic adds, count it on its tile's counter; true for the
// last slice to arrive (which re-arms the counter for the next launch and then reads the sums)
__device__ __forceinline__ bool last_slice_of_tile(const W8A8Args& p) {
  __threadfence();  // the adds are visible device-wide before this CTA is counted
  __syncthreads();
  __shared__ unsigned s_last;
  if (threadIdx.x == 0) {
    unsigned* cnt = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
    const unsigned prev = atomicAdd(cnt, 1u);
    s_last = prev == (unsigned)(p.splits - 1);
    if (s_last) *cnt = 0u;  // every slice has arrived: re-arm for the next launch
  }
  __syncthreads();
  const bool last = s_last;
  if (last) __threadfence();
  return last;
}

// split-K: add this slice's partials into the workspace; the last CTA of the tile takes the sums (and re-zeroes
// what it read), the others return. Then the epilogue: scales, bias, GELU, residual, store.
template <typename T, int MT, int NT>
__device__ __forceinline__ void finish(const W8A8Args& p, int (&acc)[MT][NT][4], int r0, int c0,
                                       const EpiOperands<MT, NT>& e) {
  if (p.splits > 1) {
    int* ws = p.part;  // (M, N) int32, zero between launches
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = r0 + mt * 16 + 8 * h;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int col = c0 + nt * 8 + j;
            if (row < p.M && col < p.N) atomicAdd(ws + row * p.N + col, acc[mt][nt][2 * h + j]);  // RED, no return
          }
      }
    if (!last_slice_of_tile(p)) return;
    // the sums: all loads issued before any use (clamped indices; elements outside M x N are never stored), then
    // the workspace zeroed for the next launch (32-bit offsets: ops.cpp requires M * N < 2^31 for split-K)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int roff = min(r0 + mt * 16 + 8 * h, p.M - 1) * p.N;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) acc[mt][nt][2 * h + j] = __ldcg(ws + roff + min(c0 + nt * 8 + j, p.N - 1));
      }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = r0 + mt * 16 + 8 * h;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int col = c0 + nt * 8 + j;
            if (row < p.M && col < p.N) __stcg(ws + row * p.N + col, 0);
          }
      }
  }

  const T* res = static_cast<const T*>(p.res);
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = r0 + mt * 16 + 8 * h;
      if (row >= p.M) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = c0 + nt * 8;  // even
        float v[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          v[j] = static_cast<float>(acc[mt][nt][2 * h + j]) * e.xs[mt][h] * e.ws[nt][j];  // Triton's order
          if (p.bias) v[j] += e.b[nt][j];
          if (p.gelu) v[j] = gelu_erf(v[j]);
        }
        if (p.pair) {  // N, the strides and the pointers are even: (col, col + 1) is one aligned pair
          if (col >= p.N) continue;
          if (res) {
            const float2 r = load_f2(res + (long long)row * p.sr + col);
            v[0] += r.x;
            v[1] += r.y;
          }
          store_f2(y + (long long)row * p.sy + col, v[0], v[1]);
        } else {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            if (col + j >= p.N) continue;
            if (res) v[j] += load_f(res + (long long)row * p.sr + col + j);
            store_f(y + (long long)row * p.sy + col + j, v[j]);
          }
        }
      }
    }
}

template <int BM, int BN, int BK, int STAGES>
constexpr int smem_bytes() {
  return STAGES * (BM + BN) * (BK + 16);
}

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM* WN * 32) w8a8_gemm_kernel(const W8A8Args p) {
  constexpr int kThreads = WM * WN * 32;
  constexpr int kLd = BK + 16;                 // shared row stride in bytes
  constexpr int kCh = BK / 16;                 // 16-byte chunks per row and stage
  constexpr int kRowStep = kThreads / kCh;     // rows between one thread's successive copies
  constexpr int kAIt = BM / kRowStep, kBIt = BN / kRowStep;
  constexpr int TM = BM / WM, TN = BN / WN;    // warp tile
  constexpr int MT = TM / 16, NT = TN / 8;     // m16n8 MMA tiles per warp
  static_assert(BK % 32 == 0 && kThreads % kCh == 0, "stage width");
  static_assert(BM % kRowStep == 0 && BN % kRowStep == 0, "the copies must cover the tile exactly");
  static_assert(TM % 16 == 0 && TN % 16 == 0, "warp tile must be whole m16 x n16 pairs (ldmatrix.x4 for B)");
  extern __shared__ __align__(128) int8_t smem[];
  const unsigned s_base = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  constexpr unsigned kStageA = BM * kLd, kStageB = BN * kLd;
  const unsigned s_b = s_base + STAGES * kStageA;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int g = lane >> 2, t4 = lane & 3;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM, split = blockIdx.z;
  const int k_begin = split * p.kt_per_split * kSplitUnit;
  const int k_end = min(p.K, k_begin + p.kt_per_split * kSplitUnit);
  const int nkt = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;

  // this thread's copies: rows lr + i * kRowStep, the 16 bytes at lk of each stage (rows past M or N are clamped
  // for the address and zero-filled)
  const int lr = tid / kCh, lk = (tid % kCh) * 16;
  const int8_t* ga[kAIt];
  const int8_t* gb[kBIt];
  unsigned a_ok = 0, b_ok = 0;
#pragma unroll
  for (int i = 0; i < kAIt; ++i) {
    const int r = m0 + lr + i * kRowStep;
    ga[i] = p.x + (long long)min(r, p.M - 1) * p.sx + k_begin + lk;
    a_ok |= (r < p.M ? 1u : 0u) << i;
  }
#pragma unroll
  for (int i = 0; i < kBIt; ++i) {
    const int r = n0 + lr + i * kRowStep;
    gb[i] = p.w + (long long)min(r, p.N - 1) * p.sw + k_begin + lk;
    b_ok |= (r < p.N ? 1u : 0u) << i;
  }
  const unsigned s_cp = lr * kLd + lk;  // shared offset of copy 0 within a stage
  auto load_stage = [&](int slot, int kt) {  // kt = 0, 1, 2, ... in order: the source pointers advance per call
    const unsigned da = s_base + slot * kStageA + s_cp, db = s_b + slot * kStageB + s_cp;
    if (k_begin + (kt + 1) * BK <= k_end) {  // a whole stage: only the row bounds
#pragma unroll
      for (int i = 0; i < kAIt; ++i) cp_async16(da + i * kRowStep * kLd, ga[i], (a_ok >> i) & 1u);
#pragma unroll
      for (int i = 0; i < kBIt; ++i) cp_async16(db + i * kRowStep * kLd, gb[i], (b_ok >> i) & 1u);
    } else {  // the slice's last, partial stage: chunks past k_end are zero-filled, their address the row's start
      const bool k_ok = k_begin + kt * BK + lk < k_end;
      const int back = k_ok ? 0 : k_begin + kt * BK + lk;
#pragma unroll
      for (int i = 0; i < kAIt; ++i) cp_async16(da + i * kRowStep * kLd, ga[i] - back, k_ok && ((a_ok >> i) & 1u));
#pragma unroll
      for (int i = 0; i < kBIt; ++i) cp_async16(db + i * kRowStep * kLd, gb[i] - back, k_ok && ((b_ok >> i) & 1u));
    }
#pragma unroll
    for (int i = 0; i < kAIt; ++i) ga[i] += BK;
#pragma unroll
    for (int i = 0; i < kBIt; ++i) gb[i] += BK;
  };

  EpiOperands<MT, NT> epi;
  load_epi(p, m0 + wm * TM + g, n0 + wn * TN + 2 * t4, epi);

  int acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

  // ldmatrix lane addresses within a stage. A (x4 per m16 x k32): lanes 0-15 rows 0-15 at k 0, lanes 16-31 rows
  // 0-15 at k 16 -> registers a0..a3 of the m16n8k32 fragment. B (x4 per n16 x k32): lanes 0-7 rows 0-7 k 0,
  // 8-15 rows 0-7 k 16, 16-23 rows 8-15 k 0, 24-31 rows 8-15 k 16 -> b0, b1 of n-tile 0 and b0, b1 of n-tile 1.
  const unsigned a_ld = (wm * TM + (lane & 15)) * kLd + (lane >> 4) * 16;
  const unsigned b_ld = (wn * TN + (lane & 7) + ((lane >> 4) << 3)) * kLd + ((lane >> 3) & 1) * 16;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nkt) load_stage(s, s);
    cp_async_commit();
  }
  int slot = 0;
#pragma unroll 1
  for (int i = 0; i < nkt; ++i) {
    cp_async_wait<STAGES - 2>();  // stage i has landed (for this thread's copies) ...
    __syncthreads();              // ... and for everyone's; the slot refilled below was last read in step i - 1
    const int nxt = i + STAGES - 1;
    if (nxt < nkt) load_stage(nxt % STAGES, nxt);
    cp_async_commit();
    const unsigned sa = s_base + slot * kStageA + a_ld, sb = s_b + slot * kStageB + b_ld;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 32) {
      unsigned af[MT][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ldsm_x4(af[mt], sa + mt * 16 * kLd + kk);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        unsigned r[4];
        ldsm_x4(r, sb + np * 16 * kLd + kk);
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_s8(acc[mt][nt], af[mt], bf[nt]);
    }
    slot = slot == STAGES - 1 ? 0 : slot + 1;
  }
  cp_async_wait<0>();

  finish<T, MT, NT>(p, acc, m0 + wm * TM + g, n0 + wn * TN + 2 * t4, epi);
}

// The epilogue from an accumulator tile in shared memory (int32 for int8 operands, float32 for e4m3; row stride LDT
// words), for a BM x BN output tile at (m0, n0): each thread takes 4-column groups in turn. Split-K: the slices add
// their tiles into the (M, N) workspace (int32 only); the last CTA of the tile reads the sums back (and re-zeroes
// them) instead of its own tile. xs, ws, bias: the tile's per-row scales and per-column scales and bias, in shared
// memory.
// EPI: kEpiRuntime, or a fixed epilogue (pairs, N % 4 == 0, bias; one slice and the residual or GELU or neither, or
// split-K in a cluster and the residual).
// res_s (kEpiBiasRes): the tile's residual, BM x BN elements in shared memory (staged by the kernel's cp.async).
template <typename T, typename Acc, int BM, int BN, int LDT, int EPI = kEpiRuntime>
__device__ __forceinline__ void finish_tile(const W8A8Args& p, const Acc* tile, const float* xs, const float* ws,
                                            const float* bias, int m0, int n0, const T* res_s = nullptr) {
  constexpr bool kF8 = std::is_same_v<Acc, float>;
  constexpr bool kFixed = EPI != kEpiRuntime;
  using V4 = std::conditional_t<kF8, float4, int4>;
  constexpr int kGroups = BM * BN / 4;
  const int tid = threadIdx.x;
  constexpr bool kSplit = EPI == kEpiBiasResSplit;  // fixed, with split-K in a cluster (2 to 8 slices at run time)
  const int splits = kSplit || !kFixed ? p.splits : 1;
  const bool has_bias = kFixed || p.bias, gelu = kFixed ? EPI == kEpiBiasGelu : p.gelu != 0;
  const bool pair = kFixed || p.pair;
  const bool in_cluster = kSplit || (!kFixed && splits > 1 && p.cluster);  // the slices' tiles summed through DSMEM
  int first = tid, step = blockDim.x, n_tiles = 1;
  if (in_cluster) {
    // split-K inside a thread-block cluster (sm_90): the `splits` CTAs of one output tile are one cluster; each
    // sums every CTA's int32 tile through distributed shared memory for an interleaved share of the 4-column
    // groups and runs their epilogue. No workspace, no atomics, no counters.
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every slice's tile is in its CTA's shared memory
    n_tiles = p.splits;
    first = tid + (int)cluster.block_rank() * blockDim.x;
    step = blockDim.x * p.splits;
  } else if (!kFixed && !kF8 && splits > 1) {  // (the float32 tiles' split-K always runs in a cluster)
    int* wsp = p.part;  // (M, N) int32, zero between launches
#pragma unroll 2
    for (int idx = tid; idx < kGroups; idx += blockDim.x) {
      const int r = idx / (BN / 4), c = idx % (BN / 4) * 4, row = m0 + r, col = n0 + c;
      if (row >= p.M) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (col + e < p.N) atomicAdd(wsp + row * p.N + col + e, tile[r * LDT + c + e]);  // RED, no return
    }
    if (!last_slice_of_tile(p)) return;
  }
  const T* res = kFixed && !kSplit ? nullptr : static_cast<const T*>(p.res);  // (kEpiBiasRes: res_s)
  T* y = static_cast<T*>(p.y);
#pragma unroll 2
  for (int idx = first; idx < kGroups; idx += step) {
    const int r = idx / (BN / 4), c = idx % (BN / 4) * 4, row = m0 + r, col = n0 + c;
    if (row >= p.M || col >= p.N) continue;
    Acc a[4];
    if (in_cluster) {  // cluster split-K: the slices' tiles, summed in rank order (exact for integers; for float32
      // the same order at every launch, so a config and split give the same bits every time)
      Acc* own = const_cast<Acc*>(tile) + r * LDT + c;
      V4 t = *reinterpret_cast<const V4*>(cooperative_groups::this_cluster().map_shared_rank(own, 0));
      for (int q = 1; q < n_tiles; ++q) {
        const V4 u = *reinterpret_cast<const V4*>(cooperative_groups::this_cluster().map_shared_rank(own, q));
        t.x += u.x, t.y += u.y, t.z += u.z, t.w += u.w;
      }
      a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
    } else if (kF8) {
      const V4 t = *reinterpret_cast<const V4*>(tile + r * LDT + c);
      a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
    } else if (!kFixed && splits > 1) {  // the sums of every slice, then the workspace re-zeroed for the next launch
#pragma unroll
      for (int e = 0; e < 4; ++e) a[e] = col + e < p.N ? __ldcg(p.part + row * p.N + col + e) : 0;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (col + e < p.N) __stcg(p.part + row * p.N + col + e, 0);
    } else {
      const V4 t = *reinterpret_cast<const V4*>(tile + r * LDT + c);
      a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
    }
    // every operation rounded on its own (no contraction into FMAs, which the compiler may choose differently for
    // each instantiation): the fixed and run-time epilogues give the same bits (the GPU tests compare them)
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      v[e] = __fmul_rn(__fmul_rn(static_cast<float>(a[e]), xs[r]), ws[c + e]);  // Triton's order
      if (has_bias) v[e] = __fadd_rn(v[e], bias[c + e]);
      if (gelu) v[e] = gelu_erf(v[e]);
    }
    if (pair && (kFixed || col + 3 < p.N)) {  // pair: N, the strides and the pointers even, so two aligned pairs
      // (fixed epilogues: N % 4 == 0, so col < N holds the whole group)
      if constexpr (EPI == kEpiBiasRes) {  // staged in shared memory during the K loop
        const float2 r0 = load_f2(res_s + r * BN + c), r1 = load_f2(res_s + r * BN + c + 2);
        v[0] = __fadd_rn(v[0], r0.x), v[1] = __fadd_rn(v[1], r0.y), v[2] = __fadd_rn(v[2], r1.x);
        v[3] = __fadd_rn(v[3], r1.y);
      } else if (res) {
        const float2 r0 = load_f2(res + (long long)row * p.sr + col), r1 = load_f2(res + (long long)row * p.sr + col + 2);
        v[0] = __fadd_rn(v[0], r0.x), v[1] = __fadd_rn(v[1], r0.y), v[2] = __fadd_rn(v[2], r1.x);
        v[3] = __fadd_rn(v[3], r1.y);
      }
      store_f2(y + (long long)row * p.sy + col, v[0], v[1]);
      store_f2(y + (long long)row * p.sy + col + 2, v[2], v[3]);
    } else if constexpr (!kFixed) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (col + e >= p.N) continue;
        if (res) v[e] = __fadd_rn(v[e], load_f(res + (long long)row * p.sr + col + e));
        store_f(y + (long long)row * p.sy + col + e, v[e]);
      }
    }
  }
  if (in_cluster) cooperative_groups::this_cluster().sync();  // no CTA leaves while others read its tile
}

// ---------------------------------------------------------------------------------------------------------------
// sm_90a: the same GEMM on the warpgroup MMA (`wgmma.mma_async` m64nNk32 s8, read by the tensor cores straight
// from shared memory: no ldmatrix, four MMA instructions per 128-byte K stage). One warpgroup (4 warps) per CTA and
// a 64 x BN tile; BN is any multiple of 8 that a wrapper exists for (32, 64, 96, 128: csrc/wgmma_s8.inc), so the
// grid can be sized to the 132 SMs (proj/fc2 N = 1024 at BN = 32 and qkv N = 3072 at BN = 96 are 128 CTAs at
// M = 197). Operands in the canonical K-major 128-byte-swizzled layout: rows of 128 bytes (one sub-tile; a K stage
// is one or two of them), 16-byte chunk c of row r stored at chunk c ^ (r % 8), 8-row groups 1024 bytes apart,
// every sub-tile 1024-byte aligned; the descriptor of the k-th 32-byte step is the sub-tile's with its start
// address advanced by 32 k bytes.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QVIT_HAS_WGMMA 1
#include "wgmma_s8.inc"

__device__ __forceinline__ unsigned long long sw128_desc(unsigned saddr) {
  return (unsigned long long)((saddr & 0x3FFFF) >> 4)  // start address
         | (1ull << 16)                                 // leading byte offset (unused for swizzled K-major)
         | ((unsigned long long)(1024 >> 4) << 32)      // stride byte offset: 8 rows x 128 bytes
         | (1ull << 62);                                // 128-byte swizzle
}

template <int N>
__device__ __forceinline__ void fence_regs(int (&acc)[1][N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(acc[0][i][e])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(float (&acc)[1][N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(acc[0][i][e])::"memory");
}
// TMA + mbarrier pipeline (the TMA configs): one thread issues each stage's two tensor copies (A rows, B rows: 128-byte
// boxes written in the same 128-byte swizzle the wgmma descriptors read), which complete on the stage's `full`
// barrier with their byte count; every warp arrives on the stage's `empty` barrier once its MMAs that read it are
// done, and the issuing thread waits for all four before reusing the slot. No cp.async, no __syncthreads per step.
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n.reg .pred P1;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra WAIT;\nDONE:\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(unsigned dst, const CUtensorMap* map, unsigned bar, int k, int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(bar), "r"(k), "r"(row)
      : "memory");
}
#endif  // sm_90a

// TOK = 0: the output tile is 64 tokens x BN channels, tokens in the MMA's M (A = activations, B = weights).
// TOK > 0, tokens in the MMA's N ("swap AB"): the output tile is TOK tokens x BN channels (BN = 64 per warpgroup),
// A = the tile's weight rows (one m64 tile per warpgroup), B = its TOK token rows, shared by the warpgroups; at
// M = 197 one CTA (TOK = 208) holds every token and reads each weight tile once: a 64 x 64 tiling has 4 row tiles per
// weight tile, i.e. four CTAs streaming the same weights (NOTES session 16: the number of distinct weight streams
// sets a batch-1 GEMM's time). The accumulator tile is channels x tokens; it goes to shared memory transposed, so
// the epilogue is the same as for TOK = 0.
template <int BN, int TOK>
__host__ __device__ constexpr int wgmma_threads() {
  return TOK > 0 ? 2 * BN : 128;  // one warpgroup per 64 weight rows when tokens are in N, else one
}

// F8: x and w hold float8_e4m3fn codes (float32 accumulators, `wgmma ... f32.e4m3.e4m3`, products summed by the
// tensor cores in place over all of K: cuBLAS's "fast accumulation"); else int8 (int32 accumulators, exact).
// BK: K bytes per pipeline stage, 128 or 256; a 256-byte stage is two 128-byte swizzled sub-tiles (A's, then B's),
// so each K step moves twice the bytes behind one barrier (Triton's M = 197 winners at proj / fc2 use 256).
// TMA: operands through the tensor-memory accelerator (tx: x as (M, K) bytes, tw: w as (N, K), boxes of 128 bytes x
// 64 / BN rows, zero-filled past M, N and K) with an mbarrier pipeline, MMAs overlapped with the next step, loads
// STAGES - 1 steps ahead; TOK = 0 and BK = 128 only. Otherwise tx and tw are unused.
// EPI: the epilogue, kEpiRuntime or a fixed one (finish_tile; fixed ones run one K slice, except kEpiBiasResSplit).
template <typename T, int BN, int STAGES, bool OVERLAP, int TOK, bool F8, int BK, bool TMA, int EPI = kEpiRuntime>
__global__ void __launch_bounds__(wgmma_threads<BN, TOK>(), 1)
    w8a8_wgmma_kernel(const W8A8Args p, const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw) {
#ifdef QVIT_HAS_WGMMA
  using Acc = std::conditional_t<F8, float, int>;
  constexpr bool kSwap = TOK > 0;
  static_assert(!kSwap || BN % 64 == 0, "tokens in N: the A operand is one m64 tile of weight rows per warpgroup");
  constexpr int kThreads = wgmma_threads<BN, TOK>();
  static_assert(BK == 128 || BK == 256, "stage width: one or two 128-byte swizzled sub-tiles");
  constexpr int kSub = BK / 128;  // sub-tiles per stage: rows of 128 bytes, RA (A) or RB (B) rows each
  constexpr int RA = kSwap ? BN : 64, RB = kSwap ? TOK : BN;  // rows of the A and B tiles of a stage (RB: the MMA's N)
  constexpr int TM = kSwap ? TOK : 64, TN = BN;               // the output tile: tokens x channels
  constexpr int NT = RB / 8;
  constexpr unsigned kStageA = RA * BK, kStageB = RB * BK;
  constexpr int kPass = kThreads / 8;  // rows one round of 16-byte copies covers (8 threads per 128-byte row)
  constexpr int kAIt = RA / kPass, kBIt = (RB + kPass - 1) / kPass;  // 16-byte copies per thread and stage
  constexpr bool kBFull = RB % kPass == 0;  // else the last round's threads past row RB copy nothing
  static_assert(RA % kPass == 0 && RB % 8 == 0, "whole rounds of A rows; B rows in whole 8-row swizzle groups");
  extern __shared__ __align__(128) int8_t smem[];
  const unsigned s_base = (static_cast<unsigned>(__cvta_generic_to_shared(smem)) + 1023u) & ~1023u;
  const unsigned s_b = s_base + STAGES * kStageA;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  if constexpr (TMA) {  // the two tensor maps' 128 bytes fetched now, not by the first tensor copies that use them
    if (tid == 0) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(&tx)) : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(&tw)) : "memory");
    }
  }
  constexpr bool kFixed = EPI != kEpiRuntime;
  static_assert(!kFixed || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "fixed epilogues: pairs");
  constexpr bool kOneSlice = kFixed && EPI != kEpiBiasResSplit;
  const int n0 = blockIdx.x * TN, m0 = blockIdx.y * TM, split = kOneSlice ? 0 : blockIdx.z;
  const int k_begin = split * p.kt_per_split * kSplitUnit;
  const int k_end = kOneSlice ? p.K : min(p.K, k_begin + p.kt_per_split * kSplitUnit);
  const int nkt = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;

  // copies: thread -> chunk tid % 8 of rows tid / 8 + kPass i, stored swizzled (row % 8 is tid / 8 % 8 for every i)
  const int lr = tid >> 3, lc = tid & 7, lk = lc * 16;
  const int8_t* ga[kAIt];
  const int8_t* gb[kBIt];
  unsigned a_ok = 0, b_ok = 0;
  bool tile_in;  // the CTA's A and B rows all lie inside M and N (all but the last row / column tiles): no row bounds
  {
    const int8_t* const src_a = kSwap ? p.w : p.x;
    const int8_t* const src_b = kSwap ? p.x : p.w;
    const long long st_a = kSwap ? p.sw : p.sx, st_b = kSwap ? p.sx : p.sw;
    const int r0a = kSwap ? n0 : m0, r0b = kSwap ? m0 : n0, lim_a = kSwap ? p.N : p.M, lim_b = kSwap ? p.M : p.N;
#pragma unroll
    for (int i = 0; i < kAIt; ++i) {
      const int r = r0a + lr + kPass * i;
      ga[i] = src_a + (long long)min(r, lim_a - 1) * st_a + k_begin + lk;
      a_ok |= (r < lim_a ? 1u : 0u) << i;
    }
#pragma unroll
    for (int i = 0; i < kBIt; ++i) {
      const int r = r0b + lr + kPass * i;
      gb[i] = src_b + (long long)min(r, lim_b - 1) * st_b + k_begin + lk;
      b_ok |= (r < lim_b ? 1u : 0u) << i;
    }
    tile_in = r0a + RA <= lim_a && r0b + RB <= lim_b;
  }
  const unsigned s_cp = lr * 128 + ((lc ^ (lr & 7)) << 4);
  // called for kt = 0, 1, 2, ... in order: the source pointers advance by one stage per call (kept in registers:
  // rebuilt from the row index per copy they cost ~120 of the ~190 instructions of a K step, h200-gpu-7 call 3).
  // Rows past M / N are zero-filled, not read: copying them from the last row instead (no predicates at all) made
  // the 59 padded rows of M = 197's last row tile one L2 hot spot: cp.async configs 1.3-1.8x slower (h200-gpu-24)
  const bool b_last_mine = kBFull || lr + kPass * (kBIt - 1) < RB;  // this thread has a row in the last round
  auto load_stage = [&](int slot, int kt) {
    const unsigned da = s_base + slot * kStageA + s_cp, db = s_b + slot * kStageB + s_cp;
    const bool whole = k_begin + (kt + 1) * BK <= k_end;
    if (whole && tile_in) {  // a whole stage inside M and N: no predicates
#pragma unroll
      for (int h = 0; h < kSub; ++h) {
#pragma unroll
        for (int i = 0; i < kAIt; ++i) cp_async16(da + h * RA * 128 + i * kPass * 128, ga[i] + h * 128, true);
#pragma unroll
        for (int i = 0; i < kBIt; ++i)
          if (i < kBIt - 1 || b_last_mine) cp_async16(db + h * RB * 128 + i * kPass * 128, gb[i] + h * 128, true);
      }
    } else {  // the last row / column tiles, and the slice's last, partial stage: rows past M / N and chunks past
      // k_end are zero-filled, a chunk past k_end with the row's start as its address
#pragma unroll
      for (int h = 0; h < kSub; ++h) {
        const int kc = k_begin + kt * BK + h * 128 + lk;  // this thread's chunk of sub-tile h
        const bool k_ok = whole || kc < k_end;
        const int back = k_ok ? 0 : kc;
#pragma unroll
        for (int i = 0; i < kAIt; ++i)
          cp_async16(da + h * RA * 128 + i * kPass * 128, ga[i] + h * 128 - back, k_ok && ((a_ok >> i) & 1u));
#pragma unroll
        for (int i = 0; i < kBIt; ++i)
          if (i < kBIt - 1 || b_last_mine)
            cp_async16(db + h * RB * 128 + i * kPass * 128, gb[i] + h * 128 - back, k_ok && ((b_ok >> i) & 1u));
      }
    }
#pragma unroll
    for (int i = 0; i < kAIt; ++i) ga[i] += BK;
#pragma unroll
    for (int i = 0; i < kBIt; ++i) gb[i] += BK;
  };

  Acc acc[1][NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[0][j][e] = 0;

  // the epilogue's scales and bias for the tile. Where a tile row / column is one thread's (every tokens-in-M config:
  // TM = 64, TN <= 128 threads), each thread loads its three values into registers first thing, before the
  // pipeline's copies, and stores them to shared memory after the K loop: loaded after the fill and stored at once,
  // the store waited for the load behind all the fill's copies, before the first MMA (ncu, h200-gpu-24 call 2: 8-9%
  // of the stall samples at qkv / fc1). Otherwise (tokens in N: TM = 208) loops after the fill, as before.
  __shared__ float s_xs[TM], s_ws[TN], s_bias[TN];
  constexpr bool kRegScales = TM <= kThreads && TN <= kThreads;
  float r_xs = 0.f, r_ws = 0.f, r_b = 0.f;
  if constexpr (kRegScales) {
    if (tid < TM) r_xs = p.xs[min(m0 + tid, p.M - 1)];
    if (tid < TN) {
      const int col = min(n0 + tid, p.N - 1);
      r_ws = p.ws[col];
      r_b = kFixed || p.bias ? p.bias[col] : 0.f;
    }
  }
  auto load_scales = [&]() {  // (after the fill; tokens in N only)
    if constexpr (!kRegScales) {
#pragma unroll
      for (int r = tid; r < TM; r += kThreads) s_xs[r] = p.xs[min(m0 + r, p.M - 1)];
#pragma unroll
      for (int c = tid; c < TN; c += kThreads) {
        const int col = min(n0 + c, p.N - 1);
        s_ws[c] = p.ws[col];
        s_bias[c] = kFixed || p.bias ? p.bias[col] : 0.f;
      }
    }
  };
  // the descriptors of slot 0 (A: this warpgroup's 64 rows when tokens are in N; one warpgroup otherwise), built
  // once: a descriptor's low 14 bits are its shared address / 16 and every address here is below 2^18 (the 227-KiB
  // limit), so another slot's or K step's descriptor is this one plus its byte offset / 16, with no carry. With one
  // warpgroup the offset is written as 0, which keeps the descriptors warp-uniform (uniform registers, no R2UR)
  const unsigned long long desc_a = sw128_desc(s_base + (kSwap ? (warp >> 2) * 64 * 128 : 0));
  const unsigned long long desc_b = sw128_desc(s_b);
  // one K step's MMAs on the stage in `slot`: KK of its 32-byte steps (BK / 32, or fewer for a TMA stage that runs
  // past its K slice into the next one's bytes), then the group committed
  auto mma_step = [&](int slot, auto kk_steps) {
    constexpr int KK = decltype(kk_steps)::value;
    const unsigned long long da = desc_a + slot * (kStageA >> 4), db = desc_b + slot * (kStageB >> 4);
    fence_regs(acc);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) {  // sub-tile kk / 4, its 32-byte step kk % 4
      const unsigned oa = ((kk >> 2) * RA * 128 + (kk & 3) * 32) >> 4;  // byte offsets / 16
      const unsigned ob = ((kk >> 2) * RB * 128 + (kk & 3) * 32) >> 4;
      if constexpr (F8) wgmma_e4m3<RB>(&acc[0][0][0], da + oa, db + ob);
      else wgmma_s8<RB>(&acc[0][0][0], da + oa, db + ob);
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  };
  using AllSteps = std::integral_constant<int, BK / 32>;

  // kEpiBiasRes: the tile's residual (TM x TN, rows of TN elements) copied into shared memory behind the pipeline's
  // stages by 8-byte cp.async, issued before the first stage's copies (and committed with them), so that its latency
  // hides under the K loop instead of following it (the run-time epilogue loads it after the loop: +0.6-0.7 us at
  // proj and fc2 against bias only, h200-gpu-21 call 1). Rows past M and columns past N are zero-filled.
  constexpr bool kResSmem = EPI == kEpiBiasRes;
  constexpr unsigned kPipeBytes = STAGES * (kStageA + kStageB);
  if constexpr (kResSmem) {
    constexpr int kCpr = TN / 4;  // 8-byte chunks per row
    const T* res = static_cast<const T*>(p.res);
#pragma unroll 1
    for (int idx = tid; idx < TM * kCpr; idx += kThreads) {
      const int r = idx / kCpr, c = idx % kCpr * 4;
      const bool ok = m0 + r < p.M && n0 + c < p.N;  // (N % 4 == 0: a chunk is inside N or past it)
      cp_async8(s_base + kPipeBytes + (r * TN + c) * sizeof(T),
                res + (long long)min(m0 + r, p.M - 1) * p.sr + min(n0 + c, p.N - 4), ok);
    }
    if constexpr (TMA) cp_async_commit();  // (waited for after the K loop; the cp.async pipeline commits it below)
  }

  if constexpr (TMA) {
    static_assert(!kSwap && BK == 128 && OVERLAP && STAGES >= 2, "TMA configs: 64 x BN tiles, 128-byte stages, overlap");
    // full[s]: stage s's bytes have landed (one arrival with the byte count, then the copies' completions);
    // empty[s]: every warp's MMAs that read slot s are done (one arrival per warp)
    __shared__ __align__(8) unsigned long long s_bar[2 * STAGES];
    const unsigned bar0 = static_cast<unsigned>(__cvta_generic_to_shared(s_bar));
    if (tid == 0) {
#pragma unroll
      for (int s = 0; s < STAGES; ++s) {
        mbar_init(bar0 + 8u * s, 1);
        mbar_init(bar0 + 8u * (STAGES + s), kThreads / 32);
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    auto issue = [&](int slot, int kt) {  // thread 0: stage kt's A and B boxes into `slot`
      const unsigned full = bar0 + 8u * slot;
      mbar_expect_tx(full, kStageA + kStageB);  // whole boxes count, their zero-filled parts included
      tma_load_2d(s_base + slot * kStageA, &tx, full, k_begin + kt * BK, m0);
      tma_load_2d(s_b + slot * kStageB, &tw, full, k_begin + kt * BK, n0);
    };
    if (tid == 0) {
#pragma unroll 1
      for (int s = 0; s < STAGES && s < nkt; ++s) issue(s, s);
    }
    load_scales();
    int slot = 0;
    unsigned phase = 0;
#pragma unroll 1
    for (int i = 0; i < nkt; ++i) {
      mbar_wait(bar0 + 8u * slot, phase);
      // a box is 128 bytes of K: one that runs past this slice's end (a multiple of 64 bytes) but not past K holds
      // the next slice's bytes, so only this slice's half is multiplied; past K the box is zero-filled
      if (k_end == p.K || k_begin + (i + 1) * BK <= k_end) mma_step(slot, AllSteps{});
      else mma_step(slot, std::integral_constant<int, 2>{});
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // step i - 1's MMAs are done (this warp)
      const int prev = slot == 0 ? STAGES - 1 : slot - 1;
      if (i > 0) {
        if (lane == 0) mbar_arrive(bar0 + 8u * (STAGES + prev));
        if (tid == 0 && i - 1 + STAGES < nkt) {  // slot `prev` refilled once every warp is done with step i - 1
          mbar_wait(bar0 + 8u * (STAGES + prev), ((i - 1) / STAGES) & 1);
          issue(prev, i - 1 + STAGES);
        }
        __syncwarp();
      }
      if (++slot == STAGES) slot = 0, phase ^= 1u;
    }
  } else {
    // OVERLAP: step i's MMAs stay in flight through step i + 1's wait and barrier (wgmma.wait_group 1), so a slot is
    // free again only two steps later and the loads run STAGES - 2 stages ahead; otherwise every step waits for its
    // MMAs and the loads run STAGES - 1 ahead
    constexpr int PF = OVERLAP ? STAGES - 2 : STAGES - 1;
    static_assert(PF >= 1, "pipeline too shallow");
#pragma unroll 1  // rolled: one copy of the stage load's code instead of PF more (static SASS of config 25 with a
    // fixed bias epilogue 944 -> 808 instructions; instruction-cache misses were 9-21% of the stalls, session 20)
    for (int s = 0; s < PF; ++s) {
      if (s < nkt) load_stage(s, s);
      cp_async_commit();
    }
    load_scales();
    int slot = 0, fill = PF % STAGES;  // the slots of stage i and of stage i + PF
#pragma unroll 1
    for (int i = 0; i < nkt; ++i) {
      cp_async_wait<PF - 1>();  // stage i has landed (this thread's copies)
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async's writes, seen by the tensor cores
      __syncthreads();  // everyone's stage i is in; everyone's MMAs that read slot `fill` are done (waited earlier)
      if (!OVERLAP) {
        if (i + PF < nkt) load_stage(fill, i + PF);
        cp_async_commit();
      }
      mma_step(slot, AllSteps{});
      if (OVERLAP) {
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // step i - 1's MMAs are done (this warp)
        if (i + PF < nkt) load_stage(fill, i + PF);  // slot of step i - 2: every warp finished it before the barrier
        cp_async_commit();
      } else {
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        fence_regs(acc);
      }
      slot = slot == STAGES - 1 ? 0 : slot + 1;
      fill = fill == STAGES - 1 ? 0 : fill + 1;
    }
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  fence_regs(acc);
  cp_async_wait<0>();
  if constexpr (kRegScales) {
    if (tid < TM) s_xs[tid] = r_xs;
    if (tid < TN) s_ws[tid] = r_ws, s_bias[tid] = r_b;
  }
  __syncthreads();  // every warp's MMAs are done with the pipeline's shared memory: it becomes the output tile
  // the int32 tile through shared memory (row stride BN + 8 words: a half-warp's 8-byte writes hit distinct
  // banks), then a rolled loop over 4-column groups: coalesced 16-byte reads of the tile, the residual and the
  // output, and a small kernel body (the fully unrolled per-fragment epilogue measured 1.5 "no instruction"
  // stall cycles per issue against Triton's 0.25: instruction-cache misses)
  // tokens in N: the fragment (channel warp * 16 + g + 8h, token nt * 8 + 2 t4 + j) is stored transposed, one word
  // at a time; a row stride of BN + 4 words (BN a multiple of 64) puts a warp's 32 stores (g = 0-7, t4 = 0-3:
  // 8 t4 + g mod 32) on distinct banks
  constexpr int kLdt = kSwap ? TN + 4 : TN + 8;
  static_assert(TM * kLdt * 4 <= STAGES * (kStageA + kStageB), "the output tile reuses the pipeline's memory");
  Acc* tile = reinterpret_cast<Acc*>(smem + (s_base - static_cast<unsigned>(__cvta_generic_to_shared(smem))));
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if constexpr (kSwap) {
        Acc* col = tile + (nt * 8 + 2 * t4) * kLdt + warp * 16 + g + 8 * h;  // warp * 16: its warpgroup's 64 rows too
        col[0] = acc[0][nt][2 * h];
        col[kLdt] = acc[0][nt][2 * h + 1];
      } else {
        using V2 = std::conditional_t<F8, float2, int2>;
        *reinterpret_cast<V2*>(tile + (warp * 16 + g + 8 * h) * kLdt + nt * 8 + 2 * t4) =
            V2{acc[0][nt][2 * h], acc[0][nt][2 * h + 1]};
      }
    }
  __syncthreads();
  const T* res_s = reinterpret_cast<const T*>(reinterpret_cast<const int8_t*>(tile) + kPipeBytes);
  finish_tile<T, Acc, TM, TN, kLdt, EPI>(p, tile, s_xs, s_ws, s_bias, m0, n0, kResSmem ? res_s : nullptr);
#else
  __trap();  // built without sm_90a code: the host side refuses these configs before launching (launch_wgmma)
#endif
}

// a 2-D tensor map over a row-major (rows, K) byte matrix with row stride `stride` bytes: boxes of 128 bytes x
// `box_rows` rows, 128-byte swizzle (the layout the wgmma descriptors read), zero fill past the matrix
inline cudaError_t tensor_map_2d(CUtensorMap* map, const void* base, int rows, int K, long long stride, int box_rows) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;  // a benign race: every thread stores the same pointer
  if (!encode) {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess) return e;
    if (q != cudaDriverEntryPointSuccess || !fn) return cudaErrorNotSupported;
    encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }
  const cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)rows};
  const cuuint64_t strides[1] = {(cuuint64_t)stride};
  const cuuint32_t box[2] = {128, (cuuint32_t)box_rows}, elem[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename T, int BN, int STAGES, bool OVERLAP, int TOK, bool F8, int BK, bool TMA, int EPI = kEpiRuntime>
cudaError_t launch_wgmma(const W8A8Args& a, cudaStream_t stream) {
  constexpr int RA = TOK > 0 ? BN : 64, RB = TOK > 0 ? TOK : BN, TM = TOK > 0 ? TOK : 64;
  constexpr int smem = STAGES * (RA + RB) * BK + 1024  // + the 1024-byte alignment of the swizzled tiles
                       + (EPI == kEpiBiasRes ? TM * BN * (int)sizeof(T) : 0);  // + the staged residual tile
  static_assert(smem + 8 * (TM + BN) <= 227 * 1024, "shared memory over the sm_90 limit");
  auto kern = w8a8_wgmma_kernel<T, BN, STAGES, OVERLAP, TOK, F8, BK, TMA, EPI>;
  int dev = 0, major = 0, minor = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (e != cudaSuccess) return e;
  if (major != 9 || minor != 0) return cudaErrorNotSupported;  // wgmma: sm_90a code only
  static unsigned long long done = 0;
  if (dev >= 64 || !((done >> dev) & 1ull)) {
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    if (dev < 64) done |= 1ull << dev;
  }
  W8A8Args args = a;
  args.cluster = a.splits > 1;  // split-K through a (1, 1, splits) cluster: no workspace
  CUtensorMap tx{}, tw{};
  if constexpr (TMA) {
    e = tensor_map_2d(&tx, a.x, a.M, a.K, a.sx, 64);
    if (e == cudaSuccess) e = tensor_map_2d(&tw, a.w, a.N, a.K, a.sw, BN);
    if (e != cudaSuccess) return e;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((a.N + BN - 1) / BN, (a.M + TM - 1) / TM, a.splits);
  cfg.blockDim = dim3(wgmma_threads<BN, TOK>());
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = a.splits;
  cfg.attrs = attr;
  cfg.numAttrs = a.splits > 1 ? 1 : 0;  // unsplit: a plain launch (no cluster scheduling for a 1-CTA cluster)
  e = cudaLaunchKernelEx(&cfg, kern, args, tx, tw);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES>
cudaError_t launch(const W8A8Args& a, cudaStream_t stream) {
  constexpr int smem = smem_bytes<BM, BN, BK, STAGES>();
  static_assert(smem <= 227 * 1024, "shared memory over the sm_90 limit");
  auto kern = w8a8_gemm_kernel<T, BM, BN, BK, WM, WN, STAGES>;
  if (smem > 48 * 1024) {  // the opt-in above 48 KiB, once per device (a benign race: the call is idempotent)
    static unsigned long long done = 0;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    if (dev >= 64 || !((done >> dev) & 1ull)) {
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (e != cudaSuccess) return e;
      if (dev < 64) done |= 1ull << dev;
    }
  }
  const dim3 grid((a.N + BN - 1) / BN, (a.M + BM - 1) / BM, a.splits);
  kern<<<grid, WM * WN * 32, smem, stream>>>(a);
  return cudaGetLastError();
}

// the tile configs offered to the tuner: {BM, BN, BK, WM, WN, STAGES} (kernels/w8a8_cuda.py CONFIGS mirrors BM, BN)
#define QVIT_W8A8_CONFIGS(X)   \
  X(0, 64, 64, 128, 2, 2, 4)   \
  X(1, 64, 128, 128, 2, 4, 3)  \
  X(2, 32, 128, 128, 1, 4, 4)  \
  X(3, 32, 64, 128, 1, 4, 4)   \
  X(4, 64, 64, 256, 2, 2, 3)   \
  X(5, 128, 128, 64, 2, 4, 4)  \
  X(30, 32, 64, 256, 1, 4, 3)
// the wgmma configs (sm_90 only): {index, BN, STAGES, OVERLAP, TOK, BK, TMA}; TOK = 0: 64 x BN tiles, else
// TOK x BN (tokens in the MMA's N, BN / 64 warpgroups); TMA: operands by tensor copies into an mbarrier pipeline
#define QVIT_W8A8_WGMMA_CONFIGS(X)      \
  X(6, 32, 4, false, 0, 128, false)     \
  X(7, 64, 4, false, 0, 128, false)     \
  X(8, 96, 4, false, 0, 128, false)     \
  X(9, 128, 4, false, 0, 128, false)    \
  X(10, 32, 8, false, 0, 128, false)    \
  X(11, 64, 6, false, 0, 128, false)    \
  X(12, 32, 6, true, 0, 128, false)     \
  X(13, 64, 5, true, 0, 128, false)     \
  X(14, 96, 5, true, 0, 128, false)     \
  X(15, 32, 8, true, 0, 128, false)     \
  X(16, 64, 4, false, 208, 128, false)  \
  X(17, 64, 6, true, 208, 128, false)   \
  X(18, 64, 3, false, 208, 128, false)  \
  X(19, 64, 6, true, 112, 128, false)   \
  X(20, 128, 4, true, 208, 128, false)  \
  X(21, 128, 5, true, 208, 128, false)  \
  X(22, 32, 3, false, 0, 256, false)    \
  X(23, 64, 3, false, 0, 256, false)    \
  X(24, 32, 4, true, 0, 256, false)     \
  X(25, 64, 4, true, 0, 256, false)     \
  X(26, 32, 6, true, 0, 128, true)      \
  X(27, 64, 5, true, 0, 128, true)      \
  X(28, 32, 8, true, 0, 128, true)      \
  X(29, 64, 4, true, 0, 128, true)

// the output dtype code (0 float16, 1 bfloat16, 2 float32) -> f called with that type's tag (the launchers' switch)
template <typename T>
struct OutType {
  using type = T;
};
template <typename F>
cudaError_t by_out_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(OutType<__half>{});
    case 1: return f(OutType<__nv_bfloat16>{});
    case 2: return f(OutType<float>{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace qvit
