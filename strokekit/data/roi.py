"""The ROI-crop augmentation (config aug.roi_crop): crop a slice to the head's bounding box with a random
margin and resize it back, so the brain fills the frame at a randomly varied scale (the VGG16 + improved
U-Net paper's "ROI" augmentation, its Fig. 2)."""
from __future__ import annotations

import cv2
import numpy as np

AIR = 13            # uint8 grey at or below this is air / background (5 % of the range)
MARGIN = (0.0, 0.15)  # random margin on each side, a share of the box's side


def head_box(image: np.ndarray, air: int = AIR) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the pixels brighter than air in the first channel; None when there are none."""
    grey = image[..., 0] if image.ndim == 3 else image
    rows, cols = np.flatnonzero((grey > air).any(axis=1)), np.flatnonzero((grey > air).any(axis=0))
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def roi_crop(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
             margin: tuple[float, float] = MARGIN) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, mask) cropped to the head's box plus a random margin per side (clipped to the slice) and resized
    back to the slice's own size: the image bilinearly, the mask by nearest neighbour. Unchanged when the
    slice holds no head."""
    box = head_box(image)
    if box is None:
        return image, mask
    h, w = image.shape[:2]
    y0, y1, x0, x1 = box
    bh, bw = y1 - y0, x1 - x0
    m = rng.uniform(*margin, size=4)
    y0, y1 = max(0, int(y0 - m[0] * bh)), min(h, int(np.ceil(y1 + m[1] * bh)))
    x0, x1 = max(0, int(x0 - m[2] * bw)), min(w, int(np.ceil(x1 + m[3] * bw)))
    if (y0, y1, x0, x1) == (0, h, 0, w):
        return image, mask
    out = cv2.resize(image[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    if mask is not None:
        mask = cv2.resize(mask[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_NEAREST)
    return out, mask
