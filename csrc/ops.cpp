// Registers qvit's CUDA kernels as torch ops in the `qvit_cuda` namespace (fake implementations
// live in Python, qvit/_ext.py). Importing the module `qvit._C` runs the registration.
//
// All input validation happens here, in host code compiled by the C++ compiler: the .cu files
// only launch kernels and return a cudaError_t. (A TORCH_CHECK thrown from nvcc-compiled host code
// crashed the process on the H200 image instead of raising; see NOTES.md.)
#include <Python.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/all.h>
#include <torch/library.h>

namespace qvit {
cudaError_t layernorm_quant_launch(int dtype, const void* x, const void* w, const void* b, int8_t* q, float* s,
                                   int64_t M, int K, int64_t stride_x, float eps, cudaStream_t stream);

std::tuple<at::Tensor, at::Tensor> layernorm_quant(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK(x.is_cuda(), "qvit_cuda.layernorm_quant: x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2, "qvit_cuda.layernorm_quant: x must be 2-D (M, K), got ", x.sizes());
  TORCH_CHECK(x.stride(1) == 1, "qvit_cuda.layernorm_quant: x must be contiguous along K");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat,
              "qvit_cuda.layernorm_quant: x must be float16/bfloat16/float32, got ", dt);
  const int64_t K = x.size(1);
  const int vec = 16 / (int)x.element_size();
  TORCH_CHECK(K > 0 && K % vec == 0, "qvit_cuda.layernorm_quant: K=", K, " must be a positive multiple of ", vec,
              " for ", dt);
  TORCH_CHECK(K <= 32 * vec * 16, "qvit_cuda.layernorm_quant: K=", K, " exceeds ", 32 * vec * 16, " for ", dt);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && (x.stride(0) * x.element_size()) % 16 == 0,
              "qvit_cuda.layernorm_quant: rows of x must be 16-byte aligned");
  const void* wp = nullptr;
  const void* bp = nullptr;
  if (weight.has_value()) {
    TORCH_CHECK(weight->device() == x.device() && weight->scalar_type() == dt && weight->numel() == K &&
                    weight->is_contiguous(),
                "qvit_cuda.layernorm_quant: weight must be a contiguous (", K, ",) ", dt, " tensor on ", x.device());
    wp = weight->data_ptr();
  }
  if (bias.has_value()) {
    TORCH_CHECK(wp != nullptr, "qvit_cuda.layernorm_quant: bias given without weight");
    TORCH_CHECK(bias->device() == x.device() && bias->scalar_type() == dt && bias->numel() == K && bias->is_contiguous(),
                "qvit_cuda.layernorm_quant: bias must be a contiguous (", K, ",) ", dt, " tensor on ", x.device());
    bp = bias->data_ptr();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  auto q = at::empty({x.size(0), K}, x.options().dtype(at::kChar));
  auto s = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) == 0) return {q, s};
  const int code = dt == at::kHalf ? 0 : dt == at::kBFloat16 ? 1 : 2;
  const cudaError_t err = layernorm_quant_launch(code, x.data_ptr(), wp, bp, q.data_ptr<int8_t>(), s.data_ptr<float>(),
                                                 x.size(0), (int)K, x.stride(0), (float)eps,
                                                 at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "qvit_cuda.layernorm_quant: kernel launch failed: ", cudaGetErrorString(err));
  return {q, s};
}
}  // namespace qvit

TORCH_LIBRARY(qvit_cuda, m) {
  m.def("layernorm_quant(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qvit_cuda, CUDA, m) { m.impl("layernorm_quant", &qvit::layernorm_quant); }

// An importable Python module with no functions of its own: the ops are reached as torch.ops.qvit_cuda.*
static struct PyModuleDef qvit_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&qvit_c_module); }
