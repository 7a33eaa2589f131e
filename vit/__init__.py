"""qvit.vit: the minimal ViT, its configs, timm checkpoint loading and the quantize() module swap."""
from qvit.vit.checkpoint import (  # noqa: F401
    CheckpointError, checkpoint_filter_fn, load_model, load_timm_checkpoint, save_model,
)
from qvit.vit.model import CONFIGS, ViT, ViTConfig, count_params, flops_per_image  # noqa: F401
from qvit.vit.quantize import (  # noqa: F401
    Fp8Linear, Fp8W4Linear, Int4Linear, Int4ProgLinear, Int8Linear, NF4Linear, QuantConfig, load_quantized, quantize, save_quantized, weight_bytes,
)
