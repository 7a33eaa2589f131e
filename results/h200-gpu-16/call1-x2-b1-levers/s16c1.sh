#!/usr/bin/env bash
# session 16, call 1: 2 x H200, one lane per GPU. Batch 1 graphed of rows 3 / 2 against timm bf16 in the same
# process, one lever per process: the new small-M tiles (64x32, 32x32; always offered at M <= 512, the graph-timed
# autotuner decides), QVIT_PDL=1 alone (never measured alone), QVIT_W4_FUSED=1 (4-bit weights expanded in the GEMM's
# registers), both. GPU tests of the small-M tiles, the fused 4-bit path and PDL first.
#   lane 0 (GPU 0): e2e off, then e2e PDL
#   lane 1 (GPU 1): GPU tests, then e2e W4_FUSED, then e2e W4_FUSED + PDL
set -u
. tools/device_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/nvidia-smi.csv
mkdir -p $OUT/r
export TRITON_CACHE_AUTOTUNING=1
run() {  # gpu, name, deadline (s since start), env...
  local gpu=$1 name=$2 dl=$3; shift 3
  env CUDA_VISIBLE_DEVICES=$gpu "$@" timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_e2e \
    --out $OUT/r/e2e-$name --only qvit,timm --batches 1 --iters 50 --warm 8 \
    --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/e2e-$name.log 2>&1; echo "e2e $name rc=$? at $(el)"
}
(run 0 off 330 QVIT_PDL=0 QVIT_W4_FUSED=0; run 0 pdl 570 QVIT_PDL=1 QVIT_W4_FUSED=0) &
(CUDA_VISIBLE_DEVICES=1 timeout 200 python3 -m pytest -q tests/test_gpu.py -k "small_m_tiles or w4f8_fused or pdl" \
   -p no:cacheprovider > $OUT/r/tests.log 2>&1; echo "tests rc=$? at $(el)"
 run 1 w4fused 400 QVIT_PDL=0 QVIT_W4_FUSED=1; run 1 w4fused-pdl 570 QVIT_PDL=1 QVIT_W4_FUSED=1) &
wait
grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -8
for f in $OUT/r/e2e-*.log; do echo "== $f"; grep -E "bench_e2e:|^warm|WARNING" $f | sort -u | cut -c1-200; done
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf - -T - ) > $OUT/r/triton-autotune.tgz 2>/dev/null
cp .gpu/s16c1.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
