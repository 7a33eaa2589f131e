#!/usr/bin/env bash
# session 16, call 2: 2 x H200, one lane per GPU; call 1's graph-timed autotune decisions (same source) unpacked.
#   lane 0 (GPU 0): Nsight Compute of the fp8 rows' M = 197 kernels with warp-state and source counters, and fc2 +
#     residual with configs pinned (64x64x128 unsplit / split-K 4, 64x32x128 unsplit / split-K 2): why split-K did
#     not shorten fc2 (session 15's open question). Then e2e batch 64 of timm bf16, timm + compile, torchao (+ compile).
#   lane 1 (GPU 1): e2e of the five study rows with timm bf16 and bitsandbytes at batch 1 and 64 (the table's
#     batch-64 column has been empty since the rows changed).
set -u
. tools/device_env.sh
tar xzf .gpu/autotune-c1.tgz -C ~/.triton/cache
mkdir -p $OUT/r/A $OUT/r/B
export TRITON_CACHE_AUTOTUNING=1
ROWS=("1 bf16" "2 4bit+qvit-attn" "3 8bit+qvit-attn" "4 4bit+sdpa-noflash" "5 8bit+sdpa-noflash")
PINS=(--pin BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,warps=4,stages=4 --pin BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,SPLIT_K=4,warps=4,stages=4
      --pin BLOCK_M=64,BLOCK_N=32,BLOCK_K=128,warps=4,stages=4 --pin BLOCK_M=64,BLOCK_N=32,BLOCK_K=128,SPLIT_K=2,warps=4,stages=4)
(export CUDA_VISIBLE_DEVICES=0
 for i in $(seq 0 7); do
   QVIT_TUNE_SHARD=$i/8 TRITON_CACHE_AUTOTUNING=0 OMP_NUM_THREADS=1 timeout 100 python3 -m qvit.profiling.ncu_kernels \
     --only M197 "${PINS[@]}" > $OUT/r/A/warm.$i.log 2>&1 &
 done; wait; echo "A warm at $(el)"
 timeout 60 python3 -m qvit.profiling.ncu_kernels --only M197 "${PINS[@]}" > $OUT/r/A/tune.log 2>&1; echo "A tune rc=$? at $(el)"
 timeout $(( start + 300 - $(date +%s) )) ncu --clock-control none --nvtx --nvtx-include "profile/" \
   --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SourceCounters \
   --section MemoryWorkloadAnalysis --csv python3 -m qvit.profiling.ncu_kernels --only M197 "${PINS[@]}" \
   > $OUT/r/A/ncu_m197.csv 2> $OUT/r/A/ncu.log; echo "A ncu rc=$? at $(el)"
 python3 -m qvit.profiling.ncu_report $OUT/r/A/ncu_m197.csv --out $OUT/r/A/ncu_m197.md > /dev/null 2>&1
 timeout $(( start + 565 - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/A/e2e-b64 \
   --only timm,compile,torchao --batches 64 --iters 20 > $OUT/r/A/e2e-b64.log 2>&1; echo "A e2e rc=$? at $(el)") &
(CUDA_VISIBLE_DEVICES=1 timeout $(( start + 565 - $(date +%s) )) python3 -m qvit.profiling.bench_e2e --out $OUT/r/B/e2e \
  --only qvit,timm,bnb --batches 1 64 --iters 30 --warm 12 --variants "${ROWS[@]}" > $OUT/r/B/e2e.log 2>&1
 echo "B e2e rc=$? at $(el)") &
wait
cat $OUT/r/A/ncu_m197.md 2>/dev/null | head -24
grep -hE "bench_e2e:|^warm" $OUT/r/A/e2e-b64.log $OUT/r/B/e2e.log | sort -u | cut -c1-300
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf - -T - ) > $OUT/r/triton-autotune.tgz 2>/dev/null
cp .gpu/s16c2.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
