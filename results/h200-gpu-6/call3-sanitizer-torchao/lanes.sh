#!/usr/bin/env bash
# session 6, call 3: 4 lanes on a 4 x H200 machine (one per GPU), one install
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
mkdir -p $OUT/c0 $OUT/k1 $OUT/e2 $OUT/s3
(export CUDA_VISIBLE_DEVICES=0
 L python3 -m pytest -m gpu tests -q -p no:cacheprovider --durations=10 -k "cuda" --junitxml=$OUT/c0/gpu_tests.xml > $OUT/c0/gpu_tests.log 2>&1; echo "cuda tests rc=$?"
 L python3 -m qvit.profiling.bench_kernels --only ceilings,lnq --out $OUT/c0/lnq > $OUT/c0/lnq.log 2>&1; echo "lnq rc=$?"
 L $E --only qvit,timm --linear triton,cuda --batches 1 --out $OUT/c0/e2e --variants "5 8bit+sdpa-noflash" "x 8bit+qvit-attn-fp16qk" \
   "4 4bit+sdpa-noflash" > $OUT/c0/e2e.log 2>&1; echo "e2e cuda rc=$?") &
(export CUDA_VISIBLE_DEVICES=1; L python3 -m qvit.profiling.bench_kernels --only ceilings,linear --quick --out $OUT/k1 > $OUT/k1/log 2>&1; echo "linear rc=$?") &
(export CUDA_VISIBLE_DEVICES=2; L $E --only qvit,timm --out $OUT/e2 --variants "5 8bit+sdpa-noflash" "x 8bit-g128+sdpa-noflash" \
   "x 8bit+qvit-attn-fp16qk" "x 8bit-g128+qvit-attn-fp16qk" > $OUT/e2/log 2>&1; echo "e2e g128 rc=$?") &
(export CUDA_VISIBLE_DEVICES=3
 L compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitize_cuda.py > $OUT/s3/memcheck.log 2>&1; echo "memcheck rc=$?"; tail -3 $OUT/s3/memcheck.log
 L compute-sanitizer --tool racecheck --error-exitcode 9 python3 tools/sanitize_cuda.py > $OUT/s3/racecheck.log 2>&1; echo "racecheck rc=$?"; tail -3 $OUT/s3/racecheck.log
 L $E --peer "torchao int8-dynamic + compile" --batches 1 256 --iters 30 --out $OUT/s3/tao > $OUT/s3/tao.log 2>&1; echo "torchao+compile rc=$?") &
wait
tail -3 $OUT/c0/gpu_tests.log; grep -E "FAIL|Error|assert" $OUT/c0/gpu_tests.log | head -30
grep -E "^lnq" $OUT/c0/lnq.log | cut -c1-400
grep -E "bench_e2e:" $OUT/c0/e2e.log $OUT/e2/log | cut -c1-200
grep -E "^linear" $OUT/k1/log | cut -c1-250
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/lanes.sh $OUT/s3/; cd $OUT && for d in c0 k1 e2 s3; do tar czf $d.tgz $d && rm -rf $d; done; ls -la $OUT
