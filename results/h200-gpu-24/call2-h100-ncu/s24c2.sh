#!/usr/bin/env bash
# session 24, call 2 (same warm machine as call 1: the extension built there): Nsight Compute of the trimmed CUDA GEMM
# against the Triton kernel at the four M = 197 shapes (durations, warp states, source-level stall samples).
set -u
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh
mkdir -p $OUT/r; cp .gpu/s24c2.sh $OUT/r/
export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
b=$start; LIMIT=${LIMIT:-590}
upto() { local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) )); d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 )); }
timeout $(upto 400) ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
  --section WarpStateStats --section LaunchStats --section Occupancy --section SourceCounters -o $OUT/r/gemm \
  python3 tools/ncu_cuda_gemm.py --pinned ${PIN:-23:1,13:1,24:1} > $OUT/r/ncu.log 2>&1; echo "ncu rc=$? at $(el)"
if [ -f $OUT/r/gemm.ncu-rep ]; then
  ncu -i $OUT/r/gemm.ncu-rep --page details --csv > $OUT/r/gemm_details.csv 2>/dev/null
  ncu -i $OUT/r/gemm.ncu-rep --page source --csv --print-source sass > $OUT/r/gemm_source.csv 2> $OUT/r/ncu_src.err
  python3 tools/ncu_table.py $OUT/r/gemm_details.csv > $OUT/r/gemm.md 2>&1; head -40 $OUT/r/gemm.md | cut -c1-250
  python3 -m qvit.profiling.ncu_source $OUT/r/gemm_source.csv --top 12 --out $OUT/r/gemm_source.md > /dev/null 2>&1
  rm -f $OUT/r/gemm_source.csv
fi
cd $OUT && tar czf r.tgz r && rm -rf r
