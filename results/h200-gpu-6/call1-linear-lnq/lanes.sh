#!/usr/bin/env bash
# session 6, call 1: 4 lanes on a 4 x H200 machine (one per GPU), one install
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1 QVIT_COMMIT=$(cat .gpu/commit)
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1 \
  || { tail -20 $OUT/install.log; }
echo "install rc=$? in $(( $(date +%s) - t0 ))s"; grep "qvit setup" $OUT/install.log | sort -u
T=$(( $(date +%s) + ${LANE_S:-490} )); M=results/h200-train-3/train/model-bf16.safetensors
L() { local left=$(( T - $(date +%s) )); [ $left -gt 5 ] || { echo "skipped (no time): $*"; return 124; }; timeout $left "$@"; }
E="python3 -m qvit.profiling.bench_e2e"
mkdir -p $OUT/k0 $OUT/a1 $OUT/t2 $OUT/e3
(export CUDA_VISIBLE_DEVICES=0; L python3 -m qvit.profiling.bench_kernels --only ceilings,linear,lnq --out $OUT/k0 > $OUT/k0/log 2>&1; echo "k0 rc=$?") &
(export CUDA_VISIBLE_DEVICES=1; L python3 -m qvit.profiling.bench_kernels --only ceilings,attention --out $OUT/a1 > $OUT/a1/log 2>&1; echo "a1 rc=$?"
 command -v compute-sanitizer > /dev/null || echo "no compute-sanitizer on PATH" > $OUT/a1/sanitizer.log
 command -v compute-sanitizer > /dev/null && L compute-sanitizer --tool memcheck --error-exitcode 9 python3 -c "
import torch
from qvit.kernels.layernorm_quant import layernorm_quant_cuda as f
for m, k in ((197, 1024), (77, 4096), (5, 72)):
    for d in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(m, k, device='cuda', dtype=d)
        f(x); f(x, torch.randn(k, device='cuda', dtype=d), torch.randn(k, device='cuda', dtype=d))
torch.cuda.synchronize(); print('ran')" > $OUT/a1/sanitizer.log 2>&1; echo "sanitizer rc=$?") &
(export CUDA_VISIBLE_DEVICES=2
 L python3 -m pytest -m gpu tests -q -p no:cacheprovider --durations=15 -k "quant_out or group or quantized_output or model_triton or demo" \
   --junitxml=$OUT/t2/gpu_tests.xml > $OUT/t2/gpu_tests.log 2>&1; echo "tests rc=$?"
 L python3 -m qvit.cli demo --check 200 --out $OUT/t2/demo_check.json --model $M > $OUT/t2/demo.log 2>&1; echo "demo rc=$?") &
(export CUDA_VISIBLE_DEVICES=3
 L $E --only qvit,timm --out $OUT/e3 --variants "5 8bit+sdpa-noflash" "x 8bit-g128+sdpa-noflash" "x 8bit+qvit-attn-fp16qk" \
   "x 8bit-g128+qvit-attn-fp16qk" "x 8bit-g128+qvit-attn" "3 8bit+qvit-attn" "x 4bit-g128+sdpa-noflash" "4 4bit+sdpa-noflash" > $OUT/e3/log 2>&1; echo "e3 rc=$?") &
wait
grep -E "bench_e2e:" $OUT/e3/log | cut -c1-160
tail -3 $OUT/t2/gpu_tests.log; grep -E "FAIL|Error" $OUT/t2/gpu_tests.log | head -20; tail -8 $OUT/t2/demo.log; tail -4 $OUT/a1/sanitizer.log
grep -E "^(attn|lin|lnq|ceil)" $OUT/a1/log $OUT/k0/log | cut -c1-300 | tail -40
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/lanes.sh $OUT/k0/; cd $OUT && for d in k0 a1 t2 e3; do tar czf $d.tgz $d && rm -rf $d; done; ls -la $OUT
