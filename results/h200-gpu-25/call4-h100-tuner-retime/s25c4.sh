#!/usr/bin/env bash
# session 25, call 4: one GPU. CUDA build (the kernel of calls 1-3); new: the tuner re-times its four fastest
# candidates in alternation, and auto's choice is timed the same way. The alternating timer's GPU test and the model's
# CUDA-backend test; the M = 197 linear benchmark twice, in separate processes (are the picks stable now?); batch-1 end to end
# of rows 3 / 2 with auto linears (QVIT_CUDA_OPT_IN=1); LayerNorm+quantize vs copy bandwidth (H200 only).
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
cuda_setup .gpu/s25c4.sh
b=$(date +%s); LIMIT=${LIMIT:-590}
upto() { local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) )); d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 )); }
timeout $(upto 60) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "tuner_times or model_cuda_backend" \
  > $OUT/r/tests-cuda.log 2>&1; echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests-cuda.log | tail -8 | cut -c1-300
linear_m197 linear $(( b - start + 110 ))
linear_m197 linear2 $(( b - start + 160 ))
mkdir -p $OUT/r/e2e
QVIT_CUDA_OPT_IN=1 timeout $(upto 420) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm \
  --linear auto --batches 1 --iters 50 --warm 8 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" \
  > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"; grep -E "bench_e2e:" $OUT/r/e2e.log | cut -c1-200
if grep -q H200 $OUT/r/nvidia-smi.csv; then
  timeout $(upto 600) python3 -m qvit.profiling.bench_kernels --out $OUT/r/lnq --only ceilings,lnq --warm 14 \
    > $OUT/r/lnq.log 2>&1; echo "lnq rc=$? at $(el)"; grep -E "^ceilings|^lnq" $OUT/r/lnq.log | cut -c1-250
fi
cd $OUT && tar czf r.tgz r && rm -rf r
