#!/usr/bin/env bash
# session 17, call 2: one GPU. The CUDA LayerNorm+quantize with the short quantizer (and the one-wave prefetching
# variant, QVIT_LNQ_ROWS=1): CUDA build, its GPU tests, compute-sanitizer memcheck of its launches, the lnq
# benchmark against the copy ceiling of the same run. Then Nsight Compute source-level stall sampling of fc2 +
# residual at M = 197 (row 3's batch-1 fc2), then profiling/weight_stream's two tables.
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
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py lnq > $OUT/r/memcheck.log 2>&1
echo "memcheck rc=$? at $(el): $(grep -E 'launches ran|SUMMARY' $OUT/r/memcheck.log | tr '\n' ' ')"
timeout $(( start + 330 - $(date +%s) )) python3 -m qvit.profiling.bench_kernels --out $OUT/r/bench --only ceilings,lnq \
  --warm 14 > $OUT/r/bench.log 2>&1; echo "bench rc=$? at $(el)"; grep -E "^ceilings|^lnq" $OUT/r/bench.log
timeout $(( start + 410 - $(date +%s) )) ncu --clock-control none --nvtx --nvtx-include "profile/" \
  --section SpeedOfLight --section WarpStateStats --section SourceCounters -o $OUT/r/fc2 \
  python3 -m qvit.profiling.ncu_kernels --only 'fp8fast_fc2_res_M197$' > $OUT/r/ncu.log 2>&1; echo "ncu rc=$? at $(el)"
if [ -f $OUT/r/fc2.ncu-rep ]; then
  ncu -i $OUT/r/fc2.ncu-rep --page source --csv --print-source sass > $OUT/r/fc2_source.csv 2> $OUT/r/ncu_src.err
  ncu -i $OUT/r/fc2.ncu-rep --page details --csv > $OUT/r/fc2_details.csv 2>/dev/null
  echo "source rows: $(wc -l < $OUT/r/fc2_source.csv)"; head -c 600 $OUT/r/fc2_source.csv; echo
fi
timeout $(( start + 500 - $(date +%s) )) python3 -m qvit.profiling.weight_stream --out $OUT/r/ws > $OUT/r/ws.log 2>&1
echo "weight_stream rc=$? at $(el)"; tail -30 $OUT/r/ws.log | cut -c1-160
cp .gpu/s17c2.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
