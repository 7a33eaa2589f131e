#!/usr/bin/env bash
# session 16, call 5: 2 x H200. Where PDL's trigger goes: QVIT_PDL=1 (every kernel releases the next one right after
# its wait; measured twice on each GPU in calls 1 and 3: row 2 -8%, row 3 +6% at batch 1) against QVIT_PDL=late (the
# GEMMs release it after their main loop). Lane 0: Nsight Compute warp-stall breakdown of fc2 + residual at M = 197
# (autotuned, and pinned 64 x 64 unsplit / split-K 4), the PDL GPU test in both modes, e2e late. Lane 1: e2e off, e2e 1.
set -u
. tools/device_env.sh
tar xzf .gpu/autotune-c2.tgz -C ~/.triton/cache
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
run() {  # gpu, name, deadline (s since start), env...
  local gpu=$1 name=$2 dl=$3; shift 3
  env CUDA_VISIBLE_DEVICES=$gpu "$@" timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_e2e \
    --out $OUT/r/e2e-$name --only qvit,timm --batches 1 --iters 50 --warm 8 \
    --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/e2e-$name.log 2>&1; echo "e2e $name rc=$? at $(el)"
}
(export CUDA_VISIBLE_DEVICES=0
 timeout 60 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
   --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" --csv \
   python3 -m qvit.profiling.ncu_kernels --only "fc2_res_M197" --pin BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,warps=4,stages=4 \
   --pin BLOCK_M=64,BLOCK_N=64,BLOCK_K=128,SPLIT_K=4,warps=4,stages=4 > $OUT/r/ncu_stalls.csv 2> $OUT/r/ncu.log
 echo "ncu rc=$? at $(el)"
 timeout 150 python3 -m pytest -q tests/test_gpu.py -k "pdl_same_logits" -p no:cacheprovider > $OUT/r/tests.log 2>&1
 echo "tests rc=$? at $(el)"
 run 0 late 320 QVIT_PDL=late) &
(run 1 off 190 QVIT_PDL=0; run 1 pdl1 320 QVIT_PDL=1) &
wait
grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -6
for f in $OUT/r/e2e-*.log; do echo "== $f"; grep -E "bench_e2e:|WARNING" $f | sort -u | cut -c1-200; done
cp .gpu/s16c5.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
