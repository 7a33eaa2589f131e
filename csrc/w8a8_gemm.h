// The W8A8 GEMM's launch arguments and entry points (csrc/w8a8_gemm.cu), shared with the C ABI in ops.cpp.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace qvit {

// Compile-time epilogues of the wgmma kernel (template argument EPI, W8A8Args::epi chosen in ops.cpp, applied in
// finish_tile of csrc/w8a8_gemm_kernels.cuh). kEpiRuntime reads every epilogue choice from the arguments at run time
// (any split, bias or not, GELU, residual, paired stores or not); the others fix them: paired stores with N % 4 == 0,
// a bias, and one K slice with one of {nothing, the residual, GELU} -- the qkv, proj / fc2 and fc1 launches of
// ViT-L -- or split-K in a cluster with the residual (fc2, K = 4096, where the tuner takes 2 slices).
// Why: session 20 measured 9-21% of the CUDA kernels' stall samples as instruction-cache misses, in kernels of
// 1,856-2,376 SASS instructions; a fixed epilogue drops the unused branches (split-K through the cluster and the
// workspace, unpaired and scalar stores, GELU) from the body.
enum : int { kEpiRuntime = 0, kEpiBias = 1, kEpiBiasRes = 2, kEpiBiasGelu = 3, kEpiBiasResSplit = 4 };

struct W8A8Args {
  const int8_t* x;
  const float* xs;
  const int8_t* w;
  const float* ws;
  const float* bias;  // may be null
  const void* res;    // may be null; output dtype
  void* y;
  int* part;           // (M, N) int32 workspace, zero between launches (the kernel leaves it zero); null when splits == 1
  unsigned* counters;  // one per output tile, zero between launches; null when splits == 1
  int M, N, K;
  long long sx, sw, sr, sy;  // row strides in elements
  int splits, kt_per_split;  // K slices and their length in 64-byte units
  int gelu, pair;            // pair: N, sy, sr even and y, res aligned to two elements (paired epilogue stores)
  int cluster;               // set by the launcher: split-K slices reduce through a thread-block cluster
  int epi;                   // kEpiRuntime or the fixed epilogue the launch matches (ops.cpp; sm_90a wgmma configs)
};

cudaError_t w8a8_gemm_launch(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream);
// x and w as float8_e4m3fn codes (the same argument layout; sm_90a warpgroup-MMA configs only)
cudaError_t w8a8_gemm_launch_fp8(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream);
// a fixed epilogue (a.epi > 0; bfloat16 output, w8a8_gemm_epi_config(cfg)): csrc/w8a8_gemm_epi_{s8,f8}.cu
cudaError_t w8a8_gemm_launch_epi(int cfg, const W8A8Args& a, cudaStream_t stream);
cudaError_t w8a8_gemm_launch_epi_fp8(int cfg, const W8A8Args& a, cudaStream_t stream);
bool w8a8_gemm_epi_config(int cfg);  // the configs with fixed-epilogue forms: the wgmma ones with tokens in M
int w8a8_gemm_tile(int cfg, int* bm, int* bn);
bool w8a8_gemm_cluster_splits(int cfg);

}  // namespace qvit
