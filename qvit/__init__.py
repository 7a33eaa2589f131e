"""qvit: Vision Transformers with fused 4/8-bit quantized kernels (Triton and CUDA)."""
__version__ = "0.1.0"

# Sub-packages (mapped from the repository's top-level folders by setup.py):
#   qvit.kernels   quantization formats, Triton ops and their PyTorch references
#   qvit.vit       the ViT model, configs, timm checkpoint loading, quantize()
#   qvit.train     training / evaluation on CIFAR-10 and image folders
#   qvit.profiling NVTX ranges and profiling scripts
from qvit.backend import Backend, AttnBackend, resolve_backend, resolve_attn_backend  # noqa: E402,F401
