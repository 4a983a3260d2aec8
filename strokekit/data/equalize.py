"""Contrast equalisation as a fixed preprocessing step (config `equalize`): every channel of the model input
equalised the same way at training, OOF and inference (the VGG16 + improved U-Net paper's "histogram
equalization"), unlike the random `aug.clahe`, which only some training samples see.

hist: OpenCV's global histogram equalisation of each 8-bit channel; clahe: contrast-limited adaptive
equalisation (clip 2.0, 8 x 8 tiles). Applied at the file's own resolution, before the resize to img_size.
"""
from __future__ import annotations

import numpy as np

EQUALIZE = ("hist", "clahe")


def equalize_channels(image: np.ndarray, method: str | None) -> np.ndarray:
    """HxWxC uint8 with each channel equalised by `method` (None: the image unchanged)."""
    if method is None:
        return image
    if method not in EQUALIZE:
        raise ValueError(f"equalize must be one of {EQUALIZE} or null, got {method!r}")
    import cv2  # only where it is used: the readers stay light for score.py and the index
    if method == "hist":
        step = cv2.equalizeHist
    else:
        step = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply
    channels = [step(np.ascontiguousarray(image[..., c])) for c in range(image.shape[-1])]
    return np.ascontiguousarray(np.stack(channels, axis=-1))
