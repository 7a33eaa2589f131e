#!/usr/bin/env bash
# session 25, call 1: one GPU. CUDA build (new: the epilogue's scales / bias loaded into registers before the pipeline
# fill; the GELU epilogue by Abramowitz & Stegun's erf, as Triton's); the CUDA GEMM's GPU tests; the M = 197 linear
# benchmark (int8 and e4m3 CUDA against Triton); memcheck of configs 22-29; batch-1 end to end of rows 3 / 2 with
# Triton and auto linears (QVIT_CUDA_OPT_IN=1); LayerNorm+quantize vs copy bandwidth (H200 only).
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
cuda_setup .gpu/s25c1.sh
b=$(date +%s); LIMIT=${LIMIT:-590}
upto() { local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) )); d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 )); }
timeout $(upto 80) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "w8a8_cuda or model_cuda_backend or cuda_raw or fixed_epilogues or epilogue_rule" \
  > $OUT/r/tests-cuda.log 2>&1; echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests-cuda.log | tail -8 | cut -c1-300
linear_m197 linear $(( b - start + 230 ))
timeout $(upto 270) compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py \
  configs=22,23,24,25,26,27,28,29 > $OUT/r/memcheck.log 2>&1
echo "memcheck rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/memcheck.log | tr '\n' ' ')"
mkdir -p $OUT/r/e2e
QVIT_CUDA_OPT_IN=1 timeout $(upto 520) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm \
  --linear triton,auto --batches 1 --iters 50 --warm 8 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" \
  > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"; grep -E "bench_e2e:" $OUT/r/e2e.log | cut -c1-200
if grep -q H200 $OUT/r/nvidia-smi.csv; then
  timeout $(upto 600) python3 -m qvit.profiling.bench_kernels --out $OUT/r/lnq --only ceilings,lnq --warm 14 \
    > $OUT/r/lnq.log 2>&1; echo "lnq rc=$? at $(el)"; grep -E "^ceilings|^lnq" $OUT/r/lnq.log | cut -c1-250
fi
cd $OUT && tar czf r.tgz r && rm -rf r
