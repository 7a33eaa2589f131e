// L2 prefetch of byte ranges (the next ViT block's weights), for a side stream of the batch-1 forward.
//
// Why: at batch 1 (M = 197) every linear reads its weights from DRAM (ViT-L/16 has 293 MiB of 8-bit weights
// against a 50 MiB L2), while its tensor-core work is ~1 us; the GEMMs wait on their first stages' loads.
// A block's four weight matrices are 12 MiB (8-bit): a prefetch of block i + 1's weights launched beside block
// i (~39 us) lands them in L2 before block i + 1's GEMMs read them, with DRAM otherwise idle at batch 1.
//
// How: sm_90's bulk prefetch (`cp.async.bulk.prefetch.L2.global [addr], size`): one instruction asks the
// copy engine for up to `chunk` bytes, no registers, no shared memory, nothing returned to the SM, so the kernel
// is a few warps that can sit beside a GEMM's CTAs on the same SMs. Bulk prefetches need 16-byte aligned
// addresses and sizes: the (< 16-byte) ends of a range are left to `prefetch.global.L2` on the lines that hold
// them. Before sm_90, every 128-byte line takes one `prefetch.global.L2`. A prefetch is a hint: nothing is
// written, and no result depends on it.
//
// Measured (H100, results/h200-gpu-26): the prediction above was wrong. A model whose blocks all run one
// L2-resident weight set was 1-2% slower at batch 1 than the model itself: the weights' DRAM reads do not bound it.
// The prefetch is off by default (ViT.set_l2_prefetch); -3% to +38% by launch shape.
#include <cuda_runtime.h>

#include <cstdint>

#include "l2_prefetch.h"

namespace qvit {
namespace {

__device__ __forceinline__ void prefetch_line(const char* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

__global__ void l2_prefetch_kernel(const L2Ranges r, int chunk) {
  const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long nth = (long long)gridDim.x * blockDim.x;
  for (int i = 0; i < r.count; ++i) {
    const char* p = r.ptr[i];
    const long long n = r.bytes[i];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const uintptr_t a0 = (reinterpret_cast<uintptr_t>(p) + 15) & ~uintptr_t(15);
    const uintptr_t a1 = (reinterpret_cast<uintptr_t>(p) + n) & ~uintptr_t(15);
    if (a1 > a0) {
      const long long len = (long long)(a1 - a0);
      for (long long off = tid * chunk; off < len; off += nth * chunk) {
        const long long sz = len - off < chunk ? len - off : chunk;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(a0 + off), "r"((unsigned)sz) : "memory");
      }
    }
    if (tid == 0 && n > 0) {  // the unaligned ends: the lines of the first and the last byte
      prefetch_line(p);
      prefetch_line(p + n - 1);
    }
#else
    for (long long off = tid * 128; off < n; off += nth * 128) prefetch_line(p + off);
    if (tid == 0 && n > 0) prefetch_line(p + n - 1);
#endif
  }
}

}  // namespace

cudaError_t l2_prefetch_launch(const L2Ranges& r, int ctas, int threads, int chunk, cudaStream_t stream) {
  l2_prefetch_kernel<<<ctas, threads, 0, stream>>>(r, chunk);
  return cudaGetLastError();
}

}  // namespace qvit
