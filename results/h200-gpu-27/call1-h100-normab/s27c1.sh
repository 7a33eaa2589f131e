#!/usr/bin/env bash
# session 27, call 1: one GPU, no CUDA build. The LayerNorm-prologue GEMM (fp8_static_norm): its GPU tests, the
# kernel and end-to-end A/B (tools/norm_fused_ab.py), the batch-1 timeline of fp8s4t.
set -u
. tools/device_env.sh
mkdir -p $OUT/r; cp .gpu/s27c1.sh $OUT/r/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv; cat $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
mark
timeout $(upto 110) python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "norm_prologue" > $OUT/r/tests.log 2>&1
echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|^E " $OUT/r/tests.log | tail -12 | cut -c1-300
mark
timeout $(upto 330) python3 tools/norm_fused_ab.py --out $OUT/r/ab.json > $OUT/r/ab.log 2>&1; echo "ab rc=$? at $(el)"
grep -E "normab|Error" $OUT/r/ab.log | cut -c1-250
mark
timeout $(upto 150) python3 tools/graph_timeline.py --variant "x fp8s4t+qvit-attn" --replays 5 --no-timm \
  --out $OUT/r/tl.json > $OUT/r/tl.log 2>&1; echo "tl rc=$? at $(el)"; tail -25 $OUT/r/tl.log | cut -c1-200
cd $OUT && tar czf r.tgz r && rm -rf r
