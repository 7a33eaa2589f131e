// qvit's CUDA kernels behind a plain C ABI, called from Python through ctypes (qvit/_ext.py), where
// they are registered as torch custom ops with fake implementations (kernels/layernorm_quant.py).
//
// Why a C ABI and not TORCH_LIBRARY + TORCH_CHECK: on the H200 image (torch 2.11, CUDA 13) any C++
// exception thrown out of this extension -- a failed TORCH_CHECK, from nvcc- or g++-compiled code
// alike -- killed the process with SIGSEGV instead of reaching Python as a RuntimeError
// (results/h200-gpu-tests, NOTES.md). Here nothing throws: every entry point validates its
// arguments, returns 0 or an error code, and leaves a message naming the op and the problem for
// qvit_last_error(). Importing `qvit._C` only proves the library loads.
#include <Python.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "l2_prefetch.h"
#include "w8a8_gemm.h"

namespace qvit {
cudaError_t layernorm_quant_launch(int dtype, const void* x, const void* w, const void* b, int8_t* q, float* s,
                                   int64_t M, int K, int64_t stride_x, float eps, cudaStream_t stream);
}

static thread_local char g_err[512] = {0};

template <typename... A>
static int fail(int code, const char* fmt, A... args) {
  std::snprintf(g_err, sizeof(g_err), fmt, args...);
  return code;
}

extern "C" {

const char* qvit_last_error() { return g_err; }

// dtype: 0 float16, 1 bfloat16, 2 float32. x (M, K) with row stride stride_x (elements), K contiguous;
// w, b (K,) or null; q (M, K) int8 contiguous; s (M,) float32. Returns 0, 1 (bad argument) or the
// CUDA error code of the launch.
int qvit_layernorm_quant(int dtype, const void* x, const void* w, const void* b, void* q, void* s, int64_t M,
                         int64_t K, int64_t stride_x, float eps, void* stream) {
  g_err[0] = 0;
  if (dtype < 0 || dtype > 2) return fail(1, "qvit_cuda.layernorm_quant: unsupported dtype code %d", dtype);
  const int esize = dtype == 2 ? 4 : 2;
  const int vec = 16 / esize;
  if (M < 0) return fail(1, "qvit_cuda.layernorm_quant: M=%lld is negative", (long long)M);
  if (K <= 0 || K % vec)
    return fail(1, "qvit_cuda.layernorm_quant: K=%lld must be a positive multiple of %d for this dtype", (long long)K, vec);
  if (K > 32 * vec * 16)
    return fail(1, "qvit_cuda.layernorm_quant: K=%lld exceeds %d for this dtype", (long long)K, 32 * vec * 16);
  if (stride_x < K) return fail(1, "qvit_cuda.layernorm_quant: row stride %lld < K=%lld", (long long)stride_x, (long long)K);
  if (reinterpret_cast<uintptr_t>(x) % 16 || (stride_x * esize) % 16)
    return fail(1, "qvit_cuda.layernorm_quant: rows of x must be 16-byte aligned");
  if (b != nullptr && w == nullptr) return fail(1, "qvit_cuda.layernorm_quant: bias given without weight");
  if ((w && reinterpret_cast<uintptr_t>(w) % 16) || (b && reinterpret_cast<uintptr_t>(b) % 16) ||
      reinterpret_cast<uintptr_t>(q) % 16)
    return fail(1, "qvit_cuda.layernorm_quant: weight, bias and q must be 16-byte aligned");
  if (x == nullptr || q == nullptr || s == nullptr) return fail(1, "qvit_cuda.layernorm_quant: null pointer");
  if (M == 0) return 0;
  const cudaError_t e = qvit::layernorm_quant_launch(dtype, x, w, b, static_cast<int8_t*>(q), static_cast<float*>(s),
                                                     M, (int)K, stride_x, eps, static_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) return fail((int)e, "qvit_cuda.layernorm_quant: launch failed: %s", cudaGetErrorString(e));
  return 0;
}

}  // extern "C"

// Whether the W8A8 epilogue stores pairs of elements: N and the output's and residual's row strides even, their
// pointers aligned to two elements.
static bool w8a8_pair(int dtype, int64_t N, const void* y, int64_t sy, const void* res, int64_t sr) {
  const int esize = dtype == 2 ? 4 : 2;
  return N % 2 == 0 && sy % 2 == 0 && reinterpret_cast<uintptr_t>(y) % (2 * esize) == 0 &&
         (!res || (sr % 2 == 0 && reinterpret_cast<uintptr_t>(res) % (2 * esize) == 0));
}

// The epilogue a W8A8 launch of these arguments runs (qvit::kEpi*, csrc/w8a8_gemm.h): a fixed one where the call
// matches one (fixed_epi 1, bfloat16 output, paired stores with N % 4 == 0, a bias, a config with fixed forms, and one
// K slice with the residual (rows 8-byte aligned: kEpiBiasRes stages them by 8-byte copies) or GELU or neither, or
// split-K with the residual), else kEpiRuntime. One rule: qvit_w8a8_gemm applies it, qvit_w8a8_gemm_epilogue reports it.
static int w8a8_epilogue(int dtype, int cfg, int splits, const void* bias, const void* res, const void* y, int64_t N,
                         int64_t sr, int64_t sy, int gelu, int fixed_epi) {
  if (!(fixed_epi == 1 && dtype == 1 && w8a8_pair(dtype, N, y, sy, res, sr) && N % 4 == 0 && bias &&
        qvit::w8a8_gemm_epi_config(cfg)))
    return qvit::kEpiRuntime;
  const bool res_vec = res && reinterpret_cast<uintptr_t>(res) % 8 == 0 && sr % 4 == 0;
  if (splits == 1 && !gelu && !res) return qvit::kEpiBias;
  if (splits == 1 && gelu && !res) return qvit::kEpiBiasGelu;
  if (splits == 1 && !gelu && res_vec) return qvit::kEpiBiasRes;
  if (splits > 1 && res && !gelu) return qvit::kEpiBiasResSplit;  // (the epi configs split in a cluster)
  return qvit::kEpiRuntime;
}

extern "C" {

// W8A8 GEMM for small M (csrc/w8a8_gemm.cu). dtype: output (and residual) 0 float16, 1 bfloat16, 2 float32.
// fp8: 0 xq and wq int8, 1 both float8_e4m3fn (sm_90a wgmma configs only).
// xq (M, K) int8 row stride sx; wq (N, K) int8 row stride sw; x_scale (M,), w_scale (N,), bias (N,) float32
// (bias, residual may be null); y (M, N) row stride sy; residual row stride sr. cfg: tile shape (0-3); splits:
// K slices (>= 1) of whole 64-byte units; with splits > 1, part (M, N) int32 workspace and counters (one
// uint32 per output tile), all zero; the kernel leaves them zero. fixed_epi: 1 runs a kernel whose epilogue is fixed
// at compile time where the call matches one (w8a8_epilogue, above), 0 always the run-time epilogue (the same bits:
// the GPU tests compare the two). Returns 0, 1 (bad argument) or the CUDA error of the launch.
int qvit_w8a8_gemm(int dtype, int cfg, int splits, const void* xq, const void* xs, const void* wq, const void* ws,
                   const void* bias, const void* res, void* y, void* part, void* counters, int64_t M, int64_t N,
                   int64_t K, int64_t sx, int64_t sw, int64_t sr, int64_t sy, int gelu, int fp8, int fixed_epi,
                   void* stream) {
  g_err[0] = 0;
  const char* op = "qvit_cuda.w8a8_gemm";
  if (dtype < 0 || dtype > 2) return fail(1, "%s: unsupported output dtype code %d", op, dtype);
  if (fp8 != 0 && fp8 != 1) return fail(1, "%s: unsupported operand format code %d", op, fp8);
  if (fixed_epi != 0 && fixed_epi != 1) return fail(1, "%s: fixed_epi must be 0 or 1, got %d", op, fixed_epi);
  int bm = 0, bn = 0;
  if (qvit::w8a8_gemm_tile(cfg, &bm, &bn)) return fail(1, "%s: unknown tile config %d", op, cfg);
  if (fp8 && !qvit::w8a8_gemm_cluster_splits(cfg))
    return fail(1, "%s: tile config %d has no float8_e4m3fn form (the sm_90a wgmma configs do)", op, cfg);
  if (M < 0 || N <= 0 || K <= 0) return fail(1, "%s: bad shape M=%lld N=%lld K=%lld", op, (long long)M, (long long)N, (long long)K);
  if (K % 16) return fail(1, "%s: K=%lld must be a multiple of 16 (16-byte loads)", op, (long long)K);
  if (!fp8 && K > 133000) return fail(1, "%s: K=%lld could overflow the int32 accumulator", op, (long long)K);
  if (M > INT32_MAX || N > INT32_MAX) return fail(1, "%s: M or N exceeds int32", op);
  if (!xq || !xs || !wq || !ws || !y) return fail(1, "%s: null pointer", op);
  if (reinterpret_cast<uintptr_t>(xq) % 16 || reinterpret_cast<uintptr_t>(wq) % 16 || sx % 16 || sw % 16)
    return fail(1, "%s: rows of xq and wq must be 16-byte aligned", op);
  if (sx < K || sw < K || sy < N || (res && sr < N)) return fail(1, "%s: a row stride is smaller than its row", op);
  const int64_t kt = (K + 63) / 64;
  if (splits < 1 || splits > kt) return fail(1, "%s: splits=%d must be in [1, %lld] for K=%lld", op, splits, (long long)kt, (long long)K);
  const int64_t per = (kt + splits - 1) / splits;
  if ((kt + per - 1) / per != splits)
    return fail(1, "%s: splits=%d leaves an empty K slice for K=%lld (use %lld)", op, splits, (long long)K, (long long)((kt + per - 1) / per));
  const bool cluster = qvit::w8a8_gemm_cluster_splits(cfg);
  if (cluster && splits > 8) return fail(1, "%s: splits=%d exceeds 8 for tile config %d (split-K in a cluster)", op, splits, cfg);
  if (splits > 1 && !cluster && (!part || !counters))
    return fail(1, "%s: splits > 1 needs the workspace and counters buffers", op);
  if (splits > 1 && !cluster && M * N >= ((int64_t)1 << 31))
    return fail(1, "%s: split-K needs M * N < 2^31 (32-bit partial offsets), got M=%lld N=%lld", op, (long long)M, (long long)N);
  const int64_t tiles_m = (M + bm - 1) / bm, tiles_n = (N + bn - 1) / bn;
  if (tiles_m > 65535) return fail(1, "%s: M=%lld needs more than 65535 row tiles", op, (long long)M);
  if (M == 0) return 0;
  (void)tiles_n;
  const bool pair = w8a8_pair(dtype, N, y, sy, res, sr);
  qvit::W8A8Args a{static_cast<const int8_t*>(xq), static_cast<const float*>(xs), static_cast<const int8_t*>(wq),
                   static_cast<const float*>(ws), static_cast<const float*>(bias), res, y, static_cast<int*>(part),
                   static_cast<unsigned*>(counters), (int)M, (int)N, (int)K, (long long)sx, (long long)sw,
                   (long long)sr, (long long)sy, splits, (int)per, gelu ? 1 : 0, pair ? 1 : 0, 0,
                   w8a8_epilogue(dtype, cfg, splits, bias, res, y, N, sr, sy, gelu, fixed_epi)};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaError_t e;
  if (a.epi) e = fp8 ? qvit::w8a8_gemm_launch_epi_fp8(cfg, a, st) : qvit::w8a8_gemm_launch_epi(cfg, a, st);
  else e = fp8 ? qvit::w8a8_gemm_launch_fp8(dtype, cfg, a, st) : qvit::w8a8_gemm_launch(dtype, cfg, a, st);
  if (e != cudaSuccess) return fail((int)e, "%s: launch failed: %s", op, cudaGetErrorString(e));
  return 0;
}

// L2 prefetch of n byte ranges (csrc/l2_prefetch.cu): ptrs[i], bytes[i] (host arrays, device addresses), n in
// [1, 8]; ctas x threads threads, `chunk` bytes per bulk prefetch. Nothing is written. Returns 0, 1 (bad argument)
// or the CUDA error of the launch.
int qvit_l2_prefetch(const void* const* ptrs, const int64_t* bytes, int n, int ctas, int threads, int chunk,
                     void* stream) {
  g_err[0] = 0;
  const char* op = "qvit_cuda.l2_prefetch";
  if (!ptrs || !bytes) return fail(1, "%s: null range arrays", op);
  if (n < 1 || n > qvit::kL2MaxRanges) return fail(1, "%s: %d ranges, expected 1 to %d", op, n, qvit::kL2MaxRanges);
  if (ctas < 1 || ctas > 1024) return fail(1, "%s: ctas=%d must be in [1, 1024]", op, ctas);
  if (threads < 32 || threads > 1024 || threads % 32)
    return fail(1, "%s: threads=%d must be a multiple of 32 in [32, 1024]", op, threads);
  if (chunk < 16 || chunk % 16 || chunk > (1 << 20))
    return fail(1, "%s: chunk=%d bytes must be a multiple of 16 in [16, 1048576]", op, chunk);
  qvit::L2Ranges r{};
  for (int i = 0; i < n; ++i) {
    if (!ptrs[i]) return fail(1, "%s: range %d has a null pointer", op, i);
    if (bytes[i] < 0) return fail(1, "%s: range %d has %lld bytes", op, i, (long long)bytes[i]);
    r.ptr[i] = static_cast<const char*>(ptrs[i]);
    r.bytes[i] = bytes[i];
  }
  r.count = n;
  const cudaError_t e = qvit::l2_prefetch_launch(r, ctas, threads, chunk, static_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) return fail((int)e, "%s: launch failed: %s", op, cudaGetErrorString(e));
  return 0;
}

int qvit_w8a8_gemm_tile(int cfg, int* bm, int* bn) { return qvit::w8a8_gemm_tile(cfg, bm, bn); }

// The epilogue qvit_w8a8_gemm runs for these arguments (qvit::kEpi*; the pointers' values are only looked at), so
// that a test can hold the Python mirror, kernels/w8a8_cuda.fixed_epilogue, to the rule the launch applies.
int qvit_w8a8_gemm_epilogue(int dtype, int cfg, int splits, const void* bias, const void* res, const void* y,
                            int64_t N, int64_t sr, int64_t sy, int gelu, int fixed_epi) {
  return w8a8_epilogue(dtype, cfg, splits, bias, res, y, N, sr, sy, gelu, fixed_epi);
}

}  // extern "C"

// An importable Python module with no functions of its own (qvit/_ext.py opens the same file with ctypes).
static struct PyModuleDef qvit_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&qvit_c_module); }
