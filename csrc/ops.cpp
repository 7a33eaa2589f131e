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

// An importable Python module with no functions of its own (qvit/_ext.py opens the same file with ctypes).
static struct PyModuleDef qvit_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&qvit_c_module); }
