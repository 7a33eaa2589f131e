#!/usr/bin/env bash
# session 19, call 1: one GPU. The CUDA W8A8 GEMM with tokens in the wgmma's N (configs 16-21) and its e4m3 form:
# CUDA build; the M = 197 linear benchmark (cuBLAS bf16, Triton int8 and fp8 fast accum, CUDA int8 and fp8 tuned,
# with the tuner's tables); the GPU tests of the CUDA GEMM (every config and split, int8 and fp8; the auto backend
# on int8 and fp8 presets); batch 1 graphed of rows 3 / 2 with Triton-only vs `auto` linears beside timm bf16;
# compute-sanitizer memcheck + racecheck of configs 16-21 (both forms). Deadlines count from the build's end.
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
mkdir -p $OUT/r
cp .gpu/s19c1.sh $OUT/r/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0 QVIT_CUDA_UNMEASURED=1
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . \
  > $OUT/r/install-cuda.log 2>&1; echo "cuda build rc=$? in $(( $(date +%s) - t0 ))s at $(el)"
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
b=$(date +%s)
upto() { echo $(( b + $1 - $(date +%s) )); }   # seconds left until $1 s after the build
P='qvit w8a8 \(int8 in\)$|qvit-cuda|qvit w8a8 fp8 fast accum \(fp8 in\)$'
timeout $(upto 120) python3 -m qvit.profiling.bench_kernels --out $OUT/r/linear1 \
  --only linear --ms 197 --providers "$P" > $OUT/r/linear1.log 2>&1; echo "linear1 rc=$? at $(el)"
grep -E "^linear" $OUT/r/linear1.log | cut -c1-300
timeout $(upto 240) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider \
  -k "w8a8_cuda or auto_backend" > $OUT/r/tests.log 2>&1
echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -12 | cut -c1-300
mkdir -p $OUT/r/e2e
timeout $(upto 320) python3 -m qvit.profiling.bench_e2e --out $OUT/r/e2e --only qvit,timm \
  --linear triton,auto --batches 1 --iters 50 --warm 8 --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" \
  > $OUT/r/e2e.log 2>&1; echo "e2e rc=$? at $(el)"; grep -E "bench_e2e:" $OUT/r/e2e.log | cut -c1-200
for tool in memcheck racecheck; do
  dl=360; [ $tool = racecheck ] && dl=400
  timeout $(upto $dl) compute-sanitizer --tool $tool --error-exitcode 9 python3 tools/sanitize_cuda.py \
    configs=16,17,18,19,20,21 > $OUT/r/$tool.log 2>&1
  echo "$tool rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/$tool.log | tr '\n' ' ')"
done
