// The int8 W8A8 GEMM's fixed-epilogue kernels (csrc/w8a8_gemm_epi.inc).
#define QVIT_EPI_F8 false
#define QVIT_EPI_ENTRY w8a8_gemm_launch_epi
#include "w8a8_gemm_epi.inc"
