#!/usr/bin/env bash
# session 7, call 5: one H200, everything in sequence (no x2 machine lent)
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1 QVIT_COMMIT=$(cat .gpu/commit)
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1 \
  || { tail -20 $OUT/install.log; }
echo "install rc=$? in $(( $(date +%s) - t0 ))s"; grep "qvit setup" $OUT/install.log | sort -u
T=$(( $(date +%s) + ${LANE_S:-430} )); M=results/h200-train-3/train/model-bf16.safetensors
L() { local left=$(( T - $(date +%s) )); [ $left -gt 5 ] || { echo "skipped (no time): $*"; return 124; }; timeout $left "$@"; }
E="python3 -m qvit.profiling.bench_e2e"
mkdir -p $OUT/k0 $OUT/c1
(L python3 -m pytest -m gpu tests -q -p no:cacheprovider --durations=5 -k "cuda or demo" --junitxml=$OUT/c1/gpu_tests.xml > $OUT/c1/gpu_tests.log 2>&1; echo "gpu tests rc=$?"
 L python3 -m qvit.profiling.bench_kernels --only ceilings,linear --quick --providers 'qvit w8a8 \(int8 in\)$|qvit-cuda|_int_mm' --out $OUT/k0/linear > $OUT/k0/linear.log 2>&1; echo "linear rc=$?"
 L ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section SchedulerStats --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' --csv python3 tools/ncu_cuda_gemm.py > $OUT/k0/ncu_gemm.csv 2> $OUT/k0/ncu_gemm.log; echo "ncu rc=$?"; tail -1 $OUT/k0/ncu_gemm.log
 L compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py > $OUT/c1/memcheck.log 2>&1; echo "memcheck rc=$?"; tail -2 $OUT/c1/memcheck.log
 L compute-sanitizer --tool racecheck --error-exitcode 9 python3 tools/sanitize_cuda.py > $OUT/c1/racecheck.log 2>&1; echo "racecheck rc=$?"; tail -2 $OUT/c1/racecheck.log
 L $E --only qvit,timm --linear triton,cuda --batches 1 --out $OUT/k0/e2e --variants "5 8bit+sdpa-noflash" "x 8bit+qvit-attn-fp16qk" > $OUT/k0/e2e.log 2>&1; echo "e2e cuda rc=$?")
wait
tail -3 $OUT/c1/gpu_tests.log; grep -E "^FAILED|Error|assert" $OUT/c1/gpu_tests.log | head -30 | cut -c1-300
grep -E "^linear" $OUT/k0/linear.log | cut -c1-300
grep -E "bench_e2e:" $OUT/k0/e2e.log | cut -c1-200
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/lanes.sh $OUT/c1/; cd $OUT && for d in k0 c1; do tar czf $d.tgz $d && rm -rf $d; done; ls -la $OUT
