"""qvit.kernels: quantization formats and the fused Triton ops, each with its PyTorch reference.

One op per module: the docstring gives the math, the shapes and the packing format; the
`*_ref` function beside the kernel is the CPU path and the test oracle.
"""
from qvit.kernels import quant  # noqa: F401
from qvit.kernels.quant import (  # noqa: F401
    NF4_CODE, dequantize_int4, dequantize_int8, dequantize_nf4, int8_matmul_ref, nf4_from_bnb, pack_int4,
    quantize_int4, quantize_int8_per_channel, quantize_int8_per_token, quantize_nf4, unpack_int4, unpack_nf4,
    w4a8_linear_ref, w4a16_linear_ref, w8a8_linear_ref,
)
