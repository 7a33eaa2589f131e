# Sourced by a session's one-off device script (bash; on the GPU machine, repository root): the environment every
# such script starts with, so that each script holds only its own steps.
#   . tools/device_env.sh        -> PYTHONPATH with .gpu/peers, QVIT_COMMIT, `start` and `el` (seconds since
#                                   start, for `timeout $(( start + N - $(date +%s) ))` deadlines), qvit installed
#                                   without the CUDA build (log: $OUT/install.log), the committed autotune cache
#                                   unpacked into ~/.triton/cache
# The full runner (CUDA build, every test, every benchmark) is tools/gpu_run.sh.
export PYTHONPATH=$PWD/.gpu/peers${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 QVIT_COMMIT=$(cat .gpu/commit 2>/dev/null)
start=$(date +%s)
el() { echo "+$(( $(date +%s) - start ))s"; }
QVIT_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/install.log" 2>&1
echo "install rc=$? at $(el)"
mkdir -p ~/.triton/cache && tar xzf tools/triton-autotune.tgz -C ~/.triton/cache
