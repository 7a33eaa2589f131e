#!/usr/bin/env bash
# session 26, call 2 (warm machine of call 1: its CUDA build kept): tools/l2_prefetch_ab.py (fixed) for row 3
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
mkdir -p $OUT/r; cp .gpu/s26c2.sh $OUT/r/
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
timeout 150 python3 tools/l2_prefetch_ab.py --variant "3 8bit+qvit-attn" --rounds 7 --iters 40 \
  --setting 8:32:16384 --setting 32:32:16384 --setting 4:32:65536 --out $OUT/r/ab-row3.json > $OUT/r/ab-row3.log 2>&1
echo "ab row3 rc=$? at $(el)"; grep -E "^l2ab|Error|error" $OUT/r/ab-row3.log | tail -12 | cut -c1-200
cd $OUT && tar czf r.tgz r && rm -rf r
