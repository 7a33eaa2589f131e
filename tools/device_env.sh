# Sourced by a session's one-off device script (bash; on the GPU machine, repository root): the environment every
# such script starts with, so that each script holds only its own steps.
#   . tools/device_env.sh        -> PYTHONPATH with .gpu/peers, QVIT_COMMIT, `start` and `el` (seconds since
#                                   start, for `timeout $(( start + N - $(date +%s) ))` deadlines), qvit installed
#                                   without the CUDA build (log: $OUT/install.log), the committed autotune cache
#                                   unpacked into ~/.triton/cache
#   QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh  -> the same without the CUDA-less install (a script that builds
#                                   the CUDA extension installs qvit itself: `cuda_setup SCRIPT`, below)
# The full runner (CUDA build, every test, every benchmark) is tools/gpu_run.sh. Helpers for the one-off scripts:
# mark / upto, e2e_b1, cuda_setup, cuda_tests, linear_m197, ncu_gemm (below).
export PYTHONPATH=$PWD/.gpu/peers${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit 2>/dev/null)
start=$(date +%s)
el() { echo "+$(( $(date +%s) - start ))s"; }
# upto N: seconds for a `timeout` that ends N seconds after the last `mark` (before any: `start`), never later than
# LIMIT - 15 seconds after `start` (LIMIT: the call's own time, default 590, so that packing the results still runs),
# at least 1
LIMIT=${LIMIT:-590}
b=$start
mark() { b=$(date +%s); }
upto() {
  local d=$(( b + $1 - $(date +%s) )) cap=$(( start + LIMIT - 15 - $(date +%s) ))
  d=$(( d < cap ? d : cap )); echo $(( d > 1 ? d : 1 ))
}
if [ "${QVIT_ENV_NO_INSTALL:-0}" != 1 ]; then
  QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/install.log" 2>&1
  echo "install rc=$? at $(el)"
fi
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
# e2e_b1 GPU NAME DEADLINE [ENV=VALUE ...]: batch 1 graphed of rows 3 / 2 with timm bf16 in one bench_e2e process on
# GPU, under the given environment, output in $OUT/r/e2e-NAME (+ .log), cut at DEADLINE seconds after `start`
# (the comparison every session-16 call repeated; one process per setting, each with its own baseline)
e2e_b1() {
  local gpu=$1 name=$2 dl=$3; shift 3
  mkdir -p "$OUT/r"
  env CUDA_VISIBLE_DEVICES=$gpu "$@" timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_e2e \
    --out "$OUT/r/e2e-$name" --only qvit,timm --batches 1 --iters 50 --warm 8 \
    --variants "3 8bit+qvit-attn" "2 4bit+qvit-attn" > "$OUT/r/e2e-$name.log" 2>&1; echo "e2e $name rc=$? at $(el)"
}
# cuda_setup SCRIPT: the opening of a one-off script that builds the CUDA extension: $OUT/r with a copy of SCRIPT and
# the card's name, clocks and driver (nvidia-smi.csv), the Triton autotune cache kept (TRITON_CACHE_AUTOTUNING=1),
# PDL off, then qvit installed with the sm_90a build (log: $OUT/r/install-cuda.log) and whether the extension loads
cuda_setup() {
  mkdir -p "$OUT/r"
  cp "$1" "$OUT/r/"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/r/nvidia-smi.csv"
  cat "$OUT/r/nvidia-smi.csv"
  export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
  local t0
  t0=$(date +%s)
  QVIT_BUILD_CUDA=1 QVIT_CUDA_ARCHS=90a MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -v -e . \
    > "$OUT/r/install-cuda.log" 2>&1; echo "cuda build rc=$? in $(( $(date +%s) - t0 ))s at $(el)"
  python3 -c "from qvit import _ext; print('ext:', _ext.load_error() or 'loaded')"
}
# cuda_tests EXPR N: tests/test_gpu.py -k EXPR into $OUT/r/tests-cuda.log, cut at `upto N`; rc and the summary lines
cuda_tests() {
  mkdir -p "$OUT/r"
  timeout "$(upto "$2")" python3 -m pytest -q tests/test_gpu.py -p no:cacheprovider -k "$1" \
    > "$OUT/r/tests-cuda.log" 2>&1
  echo "tests rc=$? at $(el)"; grep -E "passed|failed|FAILED|Error" "$OUT/r/tests-cuda.log" | tail -8 | cut -c1-300
}
# linear_m197 NAME DEADLINE: the M = 197 linear benchmark of the CUDA W8A8 GEMM (int8 and e4m3, fixed and run-time
# epilogues) against the Triton kernels of the same epilogue and cuBLAS bf16, QVIT_CUDA_OPT_IN=1 (the tuner sees every
# config), into $OUT/r/NAME (+ .log), cut at DEADLINE seconds after `start`
linear_m197() {
  local name=$1 dl=$2
  local p='qvit w8a8 \(int8 in\)$|qvit w8a8 \(\+gelu\)$|qvit w8a8 \(\+residual\)$'
  p+='|qvit-cuda w8a8 |qvit w8a8 fp8 fast accum \(fp8 in\)$'
  mkdir -p "$OUT/r"
  QVIT_CUDA_OPT_IN=1 timeout $(( start + dl - $(date +%s) )) python3 -m qvit.profiling.bench_kernels \
    --out "$OUT/r/$name" --only linear --ms 197 --providers "$p" > "$OUT/r/$name.log" 2>&1; echo "$name rc=$? at $(el)"
  grep -E "^linear" "$OUT/r/$name.log" | cut -c1-400
}
# ncu_gemm PIN DEADLINE: Nsight Compute of the CUDA GEMM at the pinned config:splits list (e.g. 23:1,13:1) and of the
# Triton kernel at the four M = 197 shapes (tools/ncu_cuda_gemm.py): $OUT/r/gemm.md (durations, occupancy) and
# gemm_source.md (stall samples by instruction); the report itself is left in $OUT/r/gemm.ncu-rep
ncu_gemm() {
  local pin=$1 dl=$2
  mkdir -p "$OUT/r"
  timeout $(( start + dl - $(date +%s) )) ncu --clock-control none --nvtx --nvtx-include "profile/" \
    --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section SourceCounters \
    -o "$OUT/r/gemm" python3 tools/ncu_cuda_gemm.py --pinned "$pin" > "$OUT/r/ncu.log" 2>&1; echo "ncu rc=$? at $(el)"
  [ -f "$OUT/r/gemm.ncu-rep" ] || return 0
  ncu -i "$OUT/r/gemm.ncu-rep" --page details --csv > "$OUT/r/gemm_details.csv" 2>/dev/null
  ncu -i "$OUT/r/gemm.ncu-rep" --page source --csv --print-source sass > "$OUT/r/gemm_source.csv" \
    2> "$OUT/r/ncu_src.err"
  python3 tools/ncu_table.py "$OUT/r/gemm_details.csv" > "$OUT/r/gemm.md" 2>&1; head -40 "$OUT/r/gemm.md" | cut -c1-250
  python3 -m qvit.profiling.ncu_source "$OUT/r/gemm_source.csv" --top 12 --out "$OUT/r/gemm_source.md" > /dev/null 2>&1
  rm -f "$OUT/r/gemm_source.csv"
}
