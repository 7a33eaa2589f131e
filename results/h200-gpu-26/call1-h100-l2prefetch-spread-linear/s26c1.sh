#!/usr/bin/env bash
# session 26, call 1: one GPU. CUDA build (+ csrc/l2_prefetch.cu); the L2 prefetch's GPU tests; batch-1 graphed A/B
# of rows 3 / 2 with the side-stream prefetch of the next block's weights (tools/l2_prefetch_ab.py: base, hot bound,
# prefetch settings, timm) and bench_e2e --l2-prefetch both (rows 3 / 2 and timm); fc1's spread inside one process (tools/gemm_spread.py, three modes); the M = 197 linears.
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
cuda_setup .gpu/s26c1.sh
mark
cuda_tests "l2_prefetch" 150
cp $OUT/r/tests-cuda.log $OUT/r/tests-l2.log
mark
timeout $(upto 120) python3 tools/l2_prefetch_ab.py --variant "3 8bit+qvit-attn" --rounds 7 --iters 40 \
  --setting 8:32:16384 --setting 32:32:16384 --setting 4:32:65536 --out $OUT/r/ab-row3.json > $OUT/r/ab-row3.log 2>&1
echo "ab row3 rc=$? at $(el)"; grep -E "^l2ab|Error|error" $OUT/r/ab-row3.log | tail -12 | cut -c1-200
mark
timeout $(upto 200) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm --batches 1 --iters 50 \
  --warm 8 --l2-prefetch both --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > $OUT/r/e2e.log 2>&1
echo "e2e rc=$? at $(el)"; grep -E "bench_e2e:" $OUT/r/e2e.log | cut -c1-200
mark
timeout $(upto 100) python3 tools/l2_prefetch_ab.py --variant "2 4bit+qvit-attn" --rounds 7 --iters 40 \
  --setting 8:32:16384 --setting 32:32:16384 --out $OUT/r/ab-row2.json > $OUT/r/ab-row2.log 2>&1
echo "ab row2 rc=$? at $(el)"; grep -E "^l2ab|Error|error" $OUT/r/ab-row2.log | tail -12 | cut -c1-200
mark
for m in "" --same-values --same-address; do
  timeout $(upto 40) python3 tools/gemm_spread.py --trials 12 $m --out $OUT/r/spread${m}.json > $OUT/r/spread${m}.log 2>&1
  echo "spread '$m' rc=$? at $(el)"; tail -4 $OUT/r/spread${m}.log | cut -c1-200; mark
done
linear_m197 linear $(( $(date +%s) - start + 120 ))
if grep -q H200 $OUT/r/nvidia-smi.csv; then
  timeout $(upto 150) python3 -m qvit.profiling.bench_kernels --out $OUT/r/lnq --only ceilings,lnq --warm 14 \
    > $OUT/r/lnq.log 2>&1; echo "lnq rc=$? at $(el)"; grep -E "^ceilings|^lnq" $OUT/r/lnq.log | cut -c1-250
fi
cd $OUT && tar czf r.tgz r && rm -rf r
