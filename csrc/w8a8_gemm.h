// The W8A8 GEMM's launch arguments and entry points (csrc/w8a8_gemm.cu), shared with the C ABI in ops.cpp.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace qvit {

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
};

cudaError_t w8a8_gemm_launch(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream);
// x and w as float8_e4m3fn codes (the same argument layout; sm_90a warpgroup-MMA configs only)
cudaError_t w8a8_gemm_launch_fp8(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream);
int w8a8_gemm_tile(int cfg, int* bm, int* bn);
bool w8a8_gemm_cluster_splits(int cfg);

}  // namespace qvit
