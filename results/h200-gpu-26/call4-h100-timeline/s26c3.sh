#!/usr/bin/env bash
# session 26, call 3: one GPU, no CUDA build (Triton linears). Where a graphed batch-1 forward's time goes
# (tools/graph_timeline.py: kernel time against idle gaps, per kernel class) for row 3 and timm bf16, row 3 with
# QVIT_PDL=1.
set -u
. tools/device_env.sh
mkdir -p $OUT/r; cp .gpu/s26c3.sh $OUT/r/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/r/nvidia-smi.csv; cat $OUT/r/nvidia-smi.csv
export TRITON_CACHE_AUTOTUNING=1
mark
timeout $(upto 110) python3 tools/graph_timeline.py --variant "3 8bit+qvit-attn" --replays 5 \
  --out $OUT/r/timeline-row3.json > $OUT/r/timeline-row3.log 2>&1
echo "timeline row3 rc=$? at $(el)"; grep -E "^timeline|Error|error" $OUT/r/timeline-row3.log | tail -6 | cut -c1-400
mark
QVIT_PDL=1 timeout $(upto 80) python3 tools/graph_timeline.py --variant "3 8bit+qvit-attn" --replays 5 --no-timm \
  --out $OUT/r/timeline-row3-pdl.json > $OUT/r/timeline-row3-pdl.log 2>&1
echo "timeline row3 PDL rc=$? at $(el)"; grep -E "^timeline|Error|error" $OUT/r/timeline-row3-pdl.log | tail -6 | cut -c1-400
mark
true
cd $OUT && tar czf r.tgz r && rm -rf r
