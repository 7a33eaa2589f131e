// The float8_e4m3fn W8A8 GEMM's fixed-epilogue kernels (csrc/w8a8_gemm_epi.inc).
#define QVIT_EPI_F8 true
#define QVIT_EPI_ENTRY w8a8_gemm_launch_epi_fp8
#include "w8a8_gemm_epi.inc"
