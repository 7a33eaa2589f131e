#!/usr/bin/env bash
# session 24, call 4 (same warm machine as calls 3 and 2: the extension built there): the M = 197 linear benchmark again
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
mkdir -p $OUT/r; cp .gpu/s24c4.sh $OUT/r/; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
P='qvit w8a8 \(int8 in\)$|qvit w8a8 \(\+gelu\)$|qvit w8a8 \(\+residual\)$|qvit-cuda w8a8 |qvit w8a8 fp8 fast accum \(fp8 in\)$'
QVIT_CUDA_OPT_IN=1 timeout 150 python3 -m qvit.profiling.bench_kernels --out $OUT/r/linear --only linear \
  --ms 197 --providers "$P" > $OUT/r/linear.log 2>&1; echo "linear rc=$? at $(el)"
grep -E "^linear" $OUT/r/linear.log | cut -c1-400
cd $OUT && tar czf r.tgz r && rm -rf r
