#!/usr/bin/env bash
# session 23, call 2 (short): the staged residual (git revert 429b4cc in the working tree): build, tests, M = 197 benchmark, memcheck
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
cuda_setup .gpu/s23c2.sh
b=$(date +%s); LIMIT=${LIMIT:-590}
upto() { local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) )); d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 )); }
timeout $(upto 40) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "fixed_epilogues or epilogue_rule" > $OUT/r/tests-epi.log 2>&1
echo "fixed-epilogue tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests-epi.log | tail -8 | cut -c1-300
P='qvit w8a8 \(int8 in\)$|qvit w8a8 \(\+gelu\)$|qvit w8a8 \(\+residual\)$|qvit-cuda w8a8 \('
QVIT_CUDA_OPT_IN=1 timeout $(upto 90) python3 -m qvit.profiling.bench_kernels --out $OUT/r/linear --only linear \
  --ms 197 --providers "$P" > $OUT/r/linear.log 2>&1; echo "linear rc=$? at $(el)"
grep -E "^linear" $OUT/r/linear.log | cut -c1-400
timeout $(upto 200) compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py configs=22,23,24,25,26,27,28,29 > $OUT/r/memcheck.log 2>&1
echo "memcheck rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/memcheck.log | tr '\n' ' ')"
cd $OUT && tar czf r.tgz r && rm -rf r
