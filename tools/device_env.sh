# Sourced by a session's one-off device script (bash; on the GPU machine, repository root): the environment every
# such script starts with, so that each script holds only its own steps.
#   . tools/device_env.sh        -> PYTHONPATH with .gpu/peers, QVIT_COMMIT, `start` and `el` (seconds since
#                                   start, for `timeout $(( start + N - $(date +%s) ))` deadlines), qvit installed
#                                   without the CUDA build (log: $OUT/install.log), the committed autotune cache
#                                   unpacked into ~/.triton/cache
#   QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh  -> the same without the CUDA-less install (a script that builds
#                                   the CUDA extension installs qvit itself: `cuda_setup SCRIPT`, below)
# The full runner (CUDA build, every test, every benchmark) is tools/gpu_run.sh.
export PYTHONPATH=$PWD/.gpu/peers${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit 2>/dev/null)
start=$(date +%s)
el() { echo "+$(( $(date +%s) - start ))s"; }
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
