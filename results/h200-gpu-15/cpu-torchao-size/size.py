"""Weight bytes of bench_e2e's torchao int8-dynamic ViT-L/16 (same construction: timm bf16, blocks' linears only),
counted with the fixed `weight_bytes` (tensor subclasses by what they store). Sizes depend only on shapes and
formats, so a CPU measures them. Run: PYTHONPATH=.gpu/peers python results/h200-gpu-15/cpu-torchao-size/size.py"""
import json
import sys

import timm
import torch
import torchao
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

from qvit.profiling.bench_e2e import _blocks_only
from qvit.vit.quantize import weight_bytes

m = timm.create_model("vit_large_patch16_224", pretrained=False).to(torch.bfloat16).eval()
bf16 = weight_bytes(m)
quantize_(m, Int8DynamicActivationInt8WeightConfig(), filter_fn=_blocks_only)
res = {"model": "vit_large_patch16_224", "torch": torch.__version__, "torchao": torchao.__version__,
       "bf16_weight_bytes": bf16, "torchao_int8_dynamic_weight_bytes": weight_bytes(m)}
json.dump(res, sys.stdout, indent=1)
