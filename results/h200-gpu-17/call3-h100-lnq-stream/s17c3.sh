#!/usr/bin/env bash
# session 17, call 3: one GPU. The CUDA LayerNorm+quantize as committed (the one-wave variant removed): CUDA build,
# its GPU tests (the exact-quantizer test with its CPU reference), compute-sanitizer memcheck and racecheck of its
# launches, the lnq benchmark against the copy ceiling of the same run again (repeatability). Then weight_stream
# with its second table fixed (no zero fill of (split, 197, N) partials inside the timing).
set -u
. tools/device_env.sh
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . \
  > $OUT/r/install-cuda.log 2>&1; echo "cuda build rc=$? in $(( $(date +%s) - t0 ))s at $(el)"
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
timeout 150 python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider \
  -k "(layernorm_quant_gpu and cuda) or quantizer_exact or cuda_layernorm or cuda_op_raw" > $OUT/r/tests.log 2>&1
echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" $OUT/r/tests.log | tail -12
for tool in memcheck racecheck; do
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 python3 tools/sanitize_cuda.py lnq > $OUT/r/$tool.log 2>&1
  echo "$tool rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/$tool.log | tr '\n' ' ')"
done
timeout $(( start + 300 - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only ceilings,lnq \
  --warm 14 > $OUT/r/bench.log 2>&1; echo "bench rc=$? at $(el)"; grep -E "^ceilings|^lnq" $OUT/r/bench.log
timeout $(( start + 400 - $(date +%s) )) python3 -m qvit.profiling.weight_stream --out $OUT/r/ws > $OUT/r/ws.log 2>&1
echo "weight_stream rc=$? at $(el)"; grep -E "loads|mma" $OUT/r/ws.log | cut -c1-160
cp .gpu/s17c3.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
