#!/usr/bin/env bash
# session 16, call 4: 2 x H200. Split-K with tall narrow tiles (256 x 32, 128 x 32, 256 x 64: every weight tile read
# by one program at M = 197). Lane 0: the split-K GPU test (6 tiles x 3 splits x 4 shapes, pinned), then batch 1
# graphed of rows 3 / 2 with QVIT_SPLITK=1. Lane 1: the same with QVIT_SPLITK=0 (same call's baseline), then
# Nsight Compute of fc2 + residual at M = 197 with the tall tiles pinned beside the autotuned config.
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
PINS=(--pin BLOCK_M=256,BLOCK_N=32,BLOCK_K=128,SPLIT_K=4,warps=4,stages=3 --pin BLOCK_M=256,BLOCK_N=32,BLOCK_K=128,SPLIT_K=8,warps=4,stages=3
      --pin BLOCK_M=128,BLOCK_N=32,BLOCK_K=128,SPLIT_K=4,warps=4,stages=4 --pin BLOCK_M=256,BLOCK_N=64,BLOCK_K=128,SPLIT_K=8,warps=8,stages=3)
(CUDA_VISIBLE_DEVICES=0 QVIT_SPLITK=1 timeout 200 python3 -m pytest -q tests/test_gpu.py -k "split_k" -p no:cacheprovider \
   > $OUT/r/tests.log 2>&1; echo "tests rc=$? at $(el)"
 run 0 splitk 560 QVIT_SPLITK=1) &
(run 1 off 330 QVIT_SPLITK=0
 export CUDA_VISIBLE_DEVICES=1
 timeout $(( start + 540 - $(date +%s) )) ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
   --section LaunchStats --section Occupancy --csv python3 -m qvit.profiling.ncu_kernels --only "fc2_res_M197" "${PINS[@]}" \
   > $OUT/r/ncu_fc2.csv 2> $OUT/r/ncu.log; echo "ncu rc=$? at $(el)"
 python3 -m qvit.profiling.ncu_report $OUT/r/ncu_fc2.csv --out $OUT/r/ncu_fc2.md > /dev/null 2>&1) &
wait
grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -6
cat $OUT/r/ncu_fc2.md 2>/dev/null
for f in $OUT/r/e2e-*.log; do echo "== $f"; grep -E "bench_e2e:|WARNING" $f | sort -u | cut -c1-200; done
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf - -T - ) > $OUT/r/triton-autotune.tgz 2>/dev/null
cp .gpu/s16c4.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
