// The W8A8 GEMM on float8_e4m3fn operands: the sm_90a warpgroup-MMA configs of csrc/w8a8_gemm_kernels.cuh with
// `wgmma ... f32.e4m3.e4m3` (float32 accumulators), the same tiles, split-K in clusters and epilogue as the int8
// ones. The mma.sync configs have no e4m3 form here (ops.cpp refuses them by name).
#include "w8a8_gemm_kernels.cuh"

namespace qvit {

namespace {

template <typename T>
cudaError_t dispatch_fp8(int cfg, const W8A8Args& a, cudaStream_t stream) {
  switch (cfg) {
#define QVIT_WCASE(i, bn, st, ov, tok, bk, tma) \
  case i: return launch_wgmma<T, bn, st, ov, tok, true, bk, tma>(a, stream);
    QVIT_W8A8_WGMMA_CONFIGS(QVIT_WCASE)
#undef QVIT_WCASE
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t w8a8_gemm_launch_fp8(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream) {
  return by_out_dtype(dtype, [&](auto t) { return dispatch_fp8<typename decltype(t)::type>(cfg, a, stream); });
}

}  // namespace qvit
