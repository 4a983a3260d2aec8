"""The kit's names, written once: pixel classes, lesion classes, image types, tasks and their head sizes,
and the flip and scale sets of test-time augmentation. Plain Python and numpy, imported by every stage."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strokekit.errors import SettingError, UnknownNameError

BACKGROUND, ISCHEMIC, HEMORRHAGIC = 0, 1, 2                       # the values of a class map
IGNORE_LABEL = 255   # a training target's "no label here" (pseudo-labels' uncertain pixels): every seg loss skips it
CLASS_NAMES = {BACKGROUND: "background", ISCHEMIC: "ischemic", HEMORRHAGIC: "hemorrhagic"}
LESION_CLASSES = (ISCHEMIC, HEMORRHAGIC)
LESION_NAMES = {CLASS_NAMES[c]: c for c in LESION_CLASSES}        # per-class config blocks are keyed by name
IMAGE_TYPES = ("none", "ischemic", "hemorrhagic", "both")          # an image's type: the lesion classes present
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)                      # components as the organisers count them

TASK_OUTPUTS = {"stroke": 2, "type": 2, "seg": 3}                  # head size per task
TASKS = tuple(TASK_OUTPUTS)

# TTA flip name -> tensor dims flipped, for NCHW images and N?HW outputs (H = -2, W = -1).
FLIPS: dict[str, tuple[int, ...]] = {
    "none": (),
    "hflip": (-1,),        # left-right: anatomically plausible for an axial brain slice
    "vflip": (-2,),        # up-down: much less so; measure on OOF before trusting it
    "hvflip": (-2, -1),
}
# TTA scales: factors of the model's input size (img_size); a scaled pass is rounded to a multiple of
# SCALE_STRIDE pixels (what a U-Net's encoder divides by), and its output brought back to the input's size.
SCALE_RANGE = (0.5, 2.0)
SCALE_STRIDE = 32


def image_type(class_map: np.ndarray) -> str:
    """A class map's image type: the lesion classes it holds ("none", "ischemic", "hemorrhagic", "both")."""
    return IMAGE_TYPES[int((class_map == ISCHEMIC).any()) + 2 * int((class_map == HEMORRHAGIC).any())]


def resolve_flips(flips: str | Sequence[str] | None) -> list[str]:
    """Validate a flip set from a config ("hflip", ["none", "hflip"], None -> ["none"]); keeps order, drops repeats."""
    if flips is None:
        return ["none"]
    names = [flips] if isinstance(flips, str) else list(flips)
    if not names:
        raise SettingError(f"empty TTA flip set; use ['none'] for no TTA. Valid names: {sorted(FLIPS)}")
    unknown = [name for name in names if name not in FLIPS]
    if unknown:
        raise UnknownNameError(f"unknown TTA flip(s) {unknown}; valid names: {sorted(FLIPS)}")
    return list(dict.fromkeys(names))


def resolve_scales(scales: float | str | Sequence[float] | None) -> list[float]:
    """Validate a TTA scale set (1.0, "0.75,1,1.25", [0.75, 1.0], None -> [1.0]); keeps order, drops repeats.

    Each scale is a factor of the model's input size within SCALE_RANGE; SettingError names a bad one."""
    if scales is None:
        return [1.0]
    if isinstance(scales, str):
        items = [item.strip() for item in scales.split(",") if item.strip()]
    elif isinstance(scales, (int, float)) and not isinstance(scales, bool):
        items = [scales]
    else:
        items = list(scales)
    if not items:
        raise SettingError("empty TTA scale set; use [1.0] for no multi-scale TTA")
    low, high = SCALE_RANGE
    out = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            value = float(item)
        except (TypeError, ValueError):
            raise SettingError(f"TTA scale {item!r} is not a number; give factors of img_size such as "
                               "0.75,1,1.25") from None
        if not low <= value <= high:
            raise SettingError(f"TTA scale {item!r} is outside {low}-{high} (a factor of img_size; e.g. "
                               "0.75,1,1.25)")
        out.append(value)
    return list(dict.fromkeys(out))
