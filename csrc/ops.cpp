// Registers qvit's CUDA kernels as torch ops in the `qvit_cuda` namespace (fake implementations
// live in Python, qvit/_ext.py). Importing the module `qvit._C` runs the registration.
#include <Python.h>
#include <torch/all.h>
#include <torch/library.h>

namespace qvit {
std::tuple<at::Tensor, at::Tensor> layernorm_quant(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias, double eps);
}

TORCH_LIBRARY(qvit_cuda, m) {
  m.def("layernorm_quant(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qvit_cuda, CUDA, m) { m.impl("layernorm_quant", &qvit::layernorm_quant); }

// An importable Python module with no functions of its own: the ops are reached as torch.ops.qvit_cuda.*
static struct PyModuleDef qvit_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&qvit_c_module); }
