#!/usr/bin/env bash
# session 24, call 3: one GPU. CUDA build (call 1's K-step trim with the row predicates back, skipped by a uniform
# branch for tiles inside M and N; GELU epilogue as before); the CUDA GEMM's GPU tests; the M = 197 linear benchmark
# (int8 and e4m3 CUDA against Triton); memcheck of configs 22-29; LayerNorm+quantize vs copy bandwidth (H200 only).
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
cuda_setup .gpu/s24c3.sh
b=$(date +%s); LIMIT=${LIMIT:-590}
upto() { local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) )); d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 )); }
timeout $(upto 80) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "w8a8_cuda or model_cuda_backend or cuda_raw or fixed_epilogues or epilogue_rule" \
  > $OUT/r/tests-cuda.log 2>&1; echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests-cuda.log | tail -8 | cut -c1-300
P='qvit w8a8 \(int8 in\)$|qvit w8a8 \(\+gelu\)$|qvit w8a8 \(\+residual\)$|qvit-cuda w8a8 |qvit w8a8 fp8 fast accum \(fp8 in\)$'
QVIT_CUDA_OPT_IN=1 timeout $(upto 160) python3 -m qvit.profiling.bench_kernels --out $OUT/r/linear --only linear \
  --ms 197 --providers "$P" > $OUT/r/linear.log 2>&1; echo "linear rc=$? at $(el)"
grep -E "^linear" $OUT/r/linear.log | cut -c1-400
timeout $(upto 200) compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py \
  configs=22,23,24,25,26,27,28,29 > $OUT/r/memcheck.log 2>&1
echo "memcheck rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/memcheck.log | tr '\n' ' ')"
if grep -q H200 $OUT/r/nvidia-smi.csv; then
  timeout $(upto 400) python3 -m qvit.profiling.bench_kernels --out $OUT/r/lnq --only ceilings,lnq --warm 14 \
    > $OUT/r/lnq.log 2>&1; echo "lnq rc=$? at $(el)"; grep -E "^ceilings|^lnq" $OUT/r/lnq.log | cut -c1-250
fi
cd $OUT && tar czf r.tgz r && rm -rf r
