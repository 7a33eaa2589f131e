#!/usr/bin/env bash
# session 14, call 1: one H200. The GPU study (real Triton kernels, bf16, CIFAR-10 test set) of the fp8 rows
# (fp8s2t, w4f8s2t) beside the study's int8 8-bit / w4a8p 4-bit rows; in parallel the one attention GPU test no
# shard reached in session 13.
set -u
. tools/device_env.sh
mkdir -p $OUT/r/tests
TRITON_CACHE_AUTOTUNING=0 timeout $(( start + ${TEST_S:-300} - $(date +%s) )) python3 -m pytest -m gpu tests/test_gpu.py -q \
  -p no:cacheprovider --tb=short -rA -k "test_attention_quantized_output_gpu and 3-97-True" > $OUT/r/tests/gpu_tests.log 2>&1 &
tp=$!
export TRITON_CACHE_AUTOTUNING=1
timeout $(( start + ${END_S:-420} - $(date +%s) )) python3 -m qvit.cli study --model results/h200-train-3/train/model-bf16.safetensors \
  --device cuda --no-ablation --data-root .gpu/data/cifar10 --out $OUT/r/study --variants "x fp8s2t+qvit-attn-fp16qk" \
  "x 4bit-fp8s2t+qvit-attn-fp16qk" "3 8bit+qvit-attn" "2 4bit+qvit-attn" "1 bf16" > $OUT/r/study.log 2>&1; echo "study rc=$? at $(el)"
grep "qvit study" $OUT/r/study.log | cut -c1-200
wait $tp; echo "tests rc=$? at $(el)"; grep -E "^(PASSED|FAILED)|^E  |passed|failed" $OUT/r/tests/gpu_tests.log | head -8 | cut -c1-200
cp .gpu/s14c1.sh $OUT/r/; cd $OUT && tar czf results.tgz r && rm -rf r
