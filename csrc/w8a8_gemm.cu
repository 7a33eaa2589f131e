// The W8A8 GEMM's int8 instantiations and host entry points (tile table, launch); the kernels and the config
// tables are csrc/w8a8_gemm_kernels.cuh, the e4m3 instantiations csrc/w8a8_gemm_fp8.cu (a separate translation unit,
// so that the two compile in parallel).
#include "w8a8_gemm_kernels.cuh"

namespace qvit {

namespace {

template <typename T>
cudaError_t dispatch(int cfg, const W8A8Args& a, cudaStream_t stream) {
  switch (cfg) {
#define QVIT_CASE(i, bm, bn, bk, wm, wn, st) \
  case i: return launch<T, bm, bn, bk, wm, wn, st>(a, stream);
    QVIT_W8A8_CONFIGS(QVIT_CASE)
#undef QVIT_CASE
#define QVIT_WCASE(i, bn, st, ov, tok, bk, tma) \
  case i: return launch_wgmma<T, bn, st, ov, tok, false, bk, tma>(a, stream);
    QVIT_W8A8_WGMMA_CONFIGS(QVIT_WCASE)
#undef QVIT_WCASE
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool w8a8_gemm_cluster_splits(int cfg) {  // the configs whose split-K runs in a cluster (at most 8 slices)
  switch (cfg) {
#define QVIT_WCL(i, bn, st, ov, tok, bk, tma) \
  case i:                   \
    return true;
    QVIT_W8A8_WGMMA_CONFIGS(QVIT_WCL)
#undef QVIT_WCL
    default: return false;
  }
}

bool w8a8_gemm_epi_config(int cfg) {  // the configs csrc/w8a8_gemm_epi.inc instantiates fixed epilogues for
  switch (cfg) {
#define QVIT_WEPI(i, bn, st, ov, tok, bk, tma) \
  case i:                                     \
    return tok == 0;
    QVIT_W8A8_WGMMA_CONFIGS(QVIT_WEPI)
#undef QVIT_WEPI
    default: return false;
  }
}

int w8a8_gemm_tile(int cfg, int* bm, int* bn) {
  switch (cfg) {
#define QVIT_TILE(i, tbm, tbn, bk, wm, wn, st) \
  case i: *bm = tbm; *bn = tbn; return 0;
    QVIT_W8A8_CONFIGS(QVIT_TILE)
#undef QVIT_TILE
#define QVIT_WTILE(i, tbn, st, ov, tok, bk, tma) \
  case i: *bm = tok > 0 ? tok : 64; *bn = tbn; return 0;
    QVIT_W8A8_WGMMA_CONFIGS(QVIT_WTILE)
#undef QVIT_WTILE
    default: return 1;
  }
}

cudaError_t w8a8_gemm_launch(int dtype, int cfg, const W8A8Args& a, cudaStream_t stream) {
  return by_out_dtype(dtype, [&](auto t) { return dispatch<typename decltype(t)::type>(cfg, a, stream); });
}

}  // namespace qvit
