#!/usr/bin/env bash
set -u
. tools/device_env.sh
mkdir -p $OUT/r; cp .gpu/s27c2.sh $OUT/r/
timeout 100 python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "norm_prologue" > $OUT/r/tests.log 2>&1
echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|^E " $OUT/r/tests.log | tail -30 | cut -c1-300
cd $OUT && tar czf r.tgz r && rm -rf r
