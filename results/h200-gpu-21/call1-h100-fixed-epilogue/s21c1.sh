#!/usr/bin/env bash
# session 21, call 1: one GPU. CUDA build (new: fixed-epilogue kernels, csrc/w8a8_gemm_epi.inc); the fixed-epilogue
# GPU test (same bits as the run-time epilogue, reference); the M = 197 linear benchmark with the CUDA kernel tuned
# with and without fixed epilogues (bias / +residual / +gelu) beside cuBLAS bf16 and Triton int8 of the same
# epilogue; compute-sanitizer memcheck of configs 22-30 (+ their fixed-epilogue launches); the `auto` backend GPU
# tests while time is left. Deadlines count from the build's end.
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
mkdir -p $OUT/r
cp .gpu/s21c1.sh $OUT/r/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv; cat $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . \
  > $OUT/r/install-cuda.log 2>&1; echo "cuda build rc=$? in $(( $(date +%s) - t0 ))s at $(el)"
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
b=$(date +%s)
LIMIT=${LIMIT:-590}
upto() { local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) )); d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 )); }
timeout $(upto 70) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "fixed_epilogues" > $OUT/r/tests-epi.log 2>&1
echo "fixed-epilogue tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests-epi.log | tail -8 | cut -c1-300
P='qvit w8a8 \(int8 in\)$|qvit w8a8 \(\+gelu\)$|qvit w8a8 \(\+residual\)$|qvit-cuda w8a8 \(|qvit w8a8 fp8 fast accum \(fp8 in\)$'
QVIT_CUDA_OPT_IN=1 timeout $(upto 340) python3 -m qvit.profiling.bench_kernels --out $OUT/r/linear --only linear --ms 197 --providers "$P" \
  > $OUT/r/linear.log 2>&1; echo "linear rc=$? at $(el)"
grep -E "^linear" $OUT/r/linear.log | cut -c1-300
timeout $(upto 430) compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py \
  configs=22,23,24,25,26,27,28,29,30 > $OUT/r/memcheck.log 2>&1
echo "memcheck rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/memcheck.log | tr '\n' ' ')"
timeout $(upto 600) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "${TESTK:-auto_backend}" \
  > $OUT/r/tests.log 2>&1
echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -12 | cut -c1-300
cd $OUT && tar czf r.tgz r && rm -rf r
