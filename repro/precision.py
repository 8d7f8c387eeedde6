"""train.precision: the arithmetic the model runs in.

fp32  IEEE fp32 throughout, as the paper's GTX 580s computed. PyTorch's default runs
      fp32 convolutions on TF32 tensor cores (10-bit mantissa) on Ampere and later
      GPUs, so that is switched off here.
tf32  fp32 tensors; convolutions and matmuls on TF32 tensor cores.
bf16  autocast to bfloat16 over fp32 weights, optimizer state and loss.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def set_fp32_math(precision: str) -> None:
    """How fp32 convolutions and matmuls run in this process (the setting is global). Only
    PyTorch's new TF32 API is used: cuDNN's setting (read by inductor's conv templates),
    its conv setting (which would otherwise override it once set) and cuBLAS's. The legacy
    `allow_tf32` flags then cannot be read (PyTorch raises on mixing the two APIs)."""
    math = "ieee" if precision == "fp32" else "tf32"
    torch.backends.cudnn.fp32_precision = math
    torch.backends.cudnn.conv.fp32_precision = math
    torch.backends.cuda.matmul.fp32_precision = math


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """Sets the fp32 math for `precision`; returns the context the forward pass runs in."""
    set_fp32_math(precision)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
