// L2 prefetch of byte ranges (csrc/l2_prefetch.cu), shared with the C ABI in ops.cpp.
#pragma once
#include <cuda_runtime.h>

namespace qvit {

constexpr int kL2MaxRanges = 8;

struct L2Ranges {
  const char* ptr[kL2MaxRanges];
  long long bytes[kL2MaxRanges];
  int count;
};

// ctas x threads threads walk every range in `chunk`-byte bulk prefetches (chunk a multiple of 16)
cudaError_t l2_prefetch_launch(const L2Ranges& r, int ctas, int threads, int chunk, cudaStream_t stream);

}  // namespace qvit
