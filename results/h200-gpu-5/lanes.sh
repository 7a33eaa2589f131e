#!/usr/bin/env bash
# session 5's last device call: 4 lanes on a 4 x H200 machine (one per GPU), one install
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1 \
  || { tail -20 $OUT/install.log; }
echo "install rc=$? in $(( $(date +%s) - t0 ))s"; grep "qvit setup" $OUT/install.log | sort -u
T=$(( $(date +%s) + ${LANE_S:-490} )); M=results/h200-train-3/train/model-bf16.safetensors
L() { local left=$(( T - $(date +%s) )); [ $left -gt 5 ] || { echo "skipped (no time): $*"; return 124; }; timeout $left "$@"; }
E="python3 -m qvit.profiling.bench_e2e"
mkdir -p $OUT/e0 $OUT/e1 $OUT/e2 $OUT/g3
(export CUDA_VISIBLE_DEVICES=0; L $E --only qvit,timm --out $OUT/e0 > $OUT/e0/log 2>&1; echo "e0 rc=$?") &
(export CUDA_VISIBLE_DEVICES=1; L $E --only timm,compile,bnb --out $OUT/e1 > $OUT/e1/log 2>&1; echo "e1 rc=$?") &
(export CUDA_VISIBLE_DEVICES=2; L $E --only timm,torchao --out $OUT/e2 > $OUT/e2/log 2>&1; echo "e2 rc=$?"
 L python3 -m qvit.cli demo --check 200 --out $OUT/e2/demo_check.json --model $M > $OUT/e2/demo.log 2>&1; echo "demo rc=$?"
 L python3 -m qvit.cli train --out $OUT/e2/qat-w4a8p --no-progress --qat w4a8p --pretrained $M --ema-decay 0 --epochs 8 \
   --lr 1e-4 --warmup-epochs 1 --eval-every 4 > $OUT/e2/qat.log 2>&1; echo "qat rc=$?"
 L python3 -m qvit.cli study --model $OUT/e2/qat-w4a8p/model.safetensors --out $OUT/e2/qat-w4a8p/study --no-ablation \
   --variants "1 bf16" "2 4bit+qvit-attn" "4 4bit+sdpa-noflash" > $OUT/e2/qstudy.log 2>&1; echo "qat study rc=$?"
 rm -f $OUT/e2/qat-w4a8p/*.safetensors $OUT/e2/qat-w4a8p/last.pt)&
(export CUDA_VISIBLE_DEVICES=3
 L python3 -m pytest -m gpu tests -q -p no:cacheprovider -k "layernorm or qk_int8 or demo_graph or cuda or attention_gpu or model_triton" \
   --junitxml=$OUT/g3/gpu_tests.xml > $OUT/g3/gpu_tests.log 2>&1; echo "tests rc=$?"
 L python3 -m qvit.profiling.bench_kernels --only ceilings,lnq --out $OUT/g3/lnq > $OUT/g3/lnq.log 2>&1; echo "lnq rc=$?"
 L python3 -m qvit.cli study --model $M --out $OUT/g3/study --no-ablation > $OUT/g3/study.log 2>&1; echo "study rc=$?"
 L python3 -m qvit.profiling.bench_kernels --only attention --out $OUT/g3/attn > $OUT/g3/attn.log 2>&1; echo "attn rc=$?"
 command -v compute-sanitizer > /dev/null && L compute-sanitizer --tool memcheck python3 -c "
import torch
from qvit.kernels.layernorm_quant import layernorm_quant_cuda as f
for m, k in ((197, 1024), (77, 4096), (5, 72)):
    for d in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(m, k, device='cuda', dtype=d)
        f(x); f(x, torch.randn(k, device='cuda', dtype=d), torch.randn(k, device='cuda', dtype=d))
torch.cuda.synchronize(); print('ran')" > $OUT/g3/sanitizer.log 2>&1; echo "sanitizer rc=$?"
 L python3 -m qvit.cli study --model $M --out $OUT/g3/ablation --variants > $OUT/g3/ablation.log 2>&1; echo "ablation rc=$?") &
wait
for d in e0 e1 e2; do grep -E "bench_e2e:" $OUT/$d/log | cut -c1-150; done
grep -E "test_top1|Error" $OUT/e2/qat.log | tail -3; grep "qvit study" $OUT/e2/qstudy.log $OUT/g3/study.log | cut -c1-120
tail -2 $OUT/g3/gpu_tests.log; grep -E "lnq|ceilings" $OUT/g3/lnq.log; tail -8 $OUT/e2/demo.log; tail -4 $OUT/g3/sanitizer.log
grep "ablation" $OUT/g3/ablation.log | cut -c1-100
grep -E "^attn" $OUT/g3/attn.log | cut -c1-400
(cd ~/.triton/cache && find . -name '*.autotune.json' | tar czf $OUT/triton-autotune.tgz -T -)
cp .gpu/lanes.sh $OUT/g3/; cd $OUT && for d in e0 e1 e2 g3; do tar czf $d.tgz $d && rm -rf $d; done; ls -la $OUT
