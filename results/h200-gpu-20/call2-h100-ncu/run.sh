#!/usr/bin/env bash
# session 20, call 2 (the same warm H100 right after call 1, extension already built): Nsight Compute of the CUDA
# W8A8 GEMM at configs 13 (cp.async, 64 x 64, 5 stages, MMAs overlapped), 27 (the same tile fed by TMA through an
# mbarrier pipeline) and 25 (cp.async, 256-byte K stages, 4 stages) beside the Triton kernel, at the four M = 197
# shapes, unsplit, caches flushed by ncu, clocks not locked.
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh; mkdir -p $OUT/n; cd $OUT/n
timeout 130 ncu --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight --section WarpStateStats \
  --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis --section SourceCounters -o gemm \
  python3 $OLDPWD/tools/ncu_cuda_gemm.py --pinned 13:1,27:1,25:1 > ncu.log 2>&1
ncu -i gemm.ncu-rep --page details --csv > details.csv; ncu -i gemm.ncu-rep --page source --csv --print-source sass > source.csv
python3 $OLDPWD/tools/ncu_table.py details.csv > gemm.md; python3 -m qvit.profiling.ncu_source source.csv --top 10 --out source.md
