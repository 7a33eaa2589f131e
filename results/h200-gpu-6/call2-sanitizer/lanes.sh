#!/usr/bin/env bash
# session 6, call 2: 4 lanes on a 4 x H200 machine (one per GPU), one install
set -u
export PYTHONPATH=$PWD/.gpu/peers PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1 QVIT_COMMIT=$(cat .gpu/commit)
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
t0=$(date +%s)
QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . > $OUT/install.log 2>&1 \
  || { tail -20 $OUT/install.log; }
echo "install rc=$? in $(( $(date +%s) - t0 ))s"; grep "qvit setup" $OUT/install.log | sort -u
T=$(( $(date +%s) + ${LANE_S:-330} )); M=results/h200-train-3/train/model-bf16.safetensors
L() { local left=$(( T - $(date +%s) )); [ $left -gt 5 ] || { echo "skipped (no time): $*"; return 124; }; timeout $left "$@"; }
E="python3 -m qvit.profiling.bench_e2e"
mkdir -p $OUT/p0 $OUT/p1 $OUT/n2 $OUT/s3
(export CUDA_VISIBLE_DEVICES=0; L $E --only timm --out $OUT/p0 > $OUT/p0/log 2>&1; echo "timm rc=$?"
 mkdir -p $OUT/p0/eager; L $E --peer "torchao int8-dynamic" --out $OUT/p0/eager > $OUT/p0/eager/log 2>&1; echo "torchao eager rc=$?") &
(export CUDA_VISIBLE_DEVICES=1; L $E --peer "torchao int8-dynamic + compile" --out $OUT/p1 > $OUT/p1/log 2>&1; echo "torchao+compile rc=$?") &
(export CUDA_VISIBLE_DEVICES=2
 L ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section LaunchStats --section Occupancy \
   --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats --csv \
   python3 -m qvit.profiling.ncu_kernels > $OUT/n2/ncu.csv 2> $OUT/n2/ncu.log; echo "ncu rc=$?"; tail -3 $OUT/n2/ncu.log) &
(export CUDA_VISIBLE_DEVICES=3
 L compute-sanitizer --tool memcheck --error-exitcode 9 python3 -c "
import torch
from qvit.kernels.layernorm_quant import layernorm_quant_cuda as f
for d in (torch.float16, torch.bfloat16, torch.float32):
    for m, k in ((197, 1024), (77, 2048 if d == torch.float32 else 4096), (5, 72), (3, 8)):
        x = torch.randn(m, k, device='cuda', dtype=d)
        f(x); f(x, torch.randn(k, device='cuda', dtype=d), torch.randn(k, device='cuda', dtype=d))
        f(x[:, : k // 2 if k >= 16 else k])  # a strided view: rows of K/2 inside rows of K
torch.cuda.synchronize(); print('ran all cases')" > $OUT/s3/memcheck.log 2>&1; echo "memcheck rc=$?"; tail -3 $OUT/s3/memcheck.log
 L compute-sanitizer --tool racecheck --error-exitcode 9 python3 -c "
import torch
from qvit.kernels.layernorm_quant import layernorm_quant_cuda as f
for d in (torch.float16, torch.float32):
    x = torch.randn(197, 1024, device='cuda', dtype=d); f(x, torch.randn(1024, device='cuda', dtype=d), torch.randn(1024, device='cuda', dtype=d))
torch.cuda.synchronize(); print('ran')" > $OUT/s3/racecheck.log 2>&1; echo "racecheck rc=$?"; tail -3 $OUT/s3/racecheck.log) &
wait
grep -E "bench_e2e:" $OUT/p0/log $OUT/p0/eager/log $OUT/p1/log | cut -c1-200; tail -2 $OUT/p1/log
cp .gpu/lanes.sh $OUT/s3/; cd $OUT && for d in p0 p1 n2 s3; do tar czf $d.tgz $d && rm -rf $d; done; ls -la $OUT
