"""Mixed precision: the one autocast of training, validation and inference (both stages import models)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # a config's / infer.py's `amp` -> autocast dtype


def autocast(device: torch.device, amp: str | None):
    """bf16 / fp16 autocast on CUDA only; on the CPU, or with amp None / "none" / False, fp32 (a null context)."""
    if device.type != "cuda" or amp in (None, "none", False):
        return nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp {amp!r}: choose one of {sorted(AMP_DTYPES)} or none")
    return torch.autocast("cuda", dtype=AMP_DTYPES[amp])
