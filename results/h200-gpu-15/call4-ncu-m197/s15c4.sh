#!/usr/bin/env bash
# session 15, call 4: one H200. Nsight Compute on the fp8 rows' batch-1 (M = 197) kernels: qkv, proj + residual,
# fc1 + GELU-tanh + fp8 out, fc2 + residual, the attention at B = 1, cuBLAS bf16 fc2 beside them (weights from
# DRAM: ncu flushes caches before each profiled launch). What bounds a 6-13 us GEMM whose weight bytes take ~1 us.
set -u
. tools/device_env.sh
mkdir -p $OUT/r
for i in $(seq 0 11); do  # compile every config once, in parallel (no tuning decisions kept)
  QVIT_TUNE_SHARD=$i/12 TRITON_CACHE_AUTOTUNING=0 OMP_NUM_THREADS=1 timeout 100 python3 -m qvit.profiling.ncu_kernels --only M197 \
    > $OUT/r/warm.$i.log 2>&1 &
done; wait; echo "warm at $(el)"
export TRITON_CACHE_AUTOTUNING=1
timeout 60 python3 -m qvit.profiling.ncu_kernels --only M197 > $OUT/r/tune.log 2>&1; echo "tune rc=$? at $(el)"
timeout $(( start + ${END_S:-215} - $(date +%s) )) ncu --clock-control none --nvtx --nvtx-include "profile/" \
  --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
  --csv python3 -m qvit.profiling.ncu_kernels --only M197 > $OUT/r/ncu_m197.csv 2> $OUT/r/ncu.log; echo "ncu rc=$? at $(el)"
python3 -m qvit.profiling.ncu_report $OUT/r/ncu_m197.csv --out $OUT/r/ncu_m197.md 2>&1 | tail -2; cat $OUT/r/ncu_m197.md 2>/dev/null | head -20
cp .gpu/s15c4.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
