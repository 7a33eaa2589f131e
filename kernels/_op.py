"""Registering a kernel launcher as a torch custom op without paying the op's dispatch cost in eager mode.

`torch.library.custom_op` is what lets torch.compile and CUDA graphs trace through a Triton
launcher, but its Python dispatch costs tens of microseconds per call, as much as a ViT-L GEMM at
batch 1. `fast_custom_op` registers the op and returns a callable that takes the op under
torch.compile and calls the launcher directly otherwise (same function, same checks either way).
"""
from __future__ import annotations

import functools

import torch


def fast_custom_op(name: str, fake):
    def deco(fn):
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if torch.compiler.is_compiling():
                return op(*args, **kwargs)
            return fn(*args, **kwargs)

        call.op = op
        return call
    return deco
