"""The post-processing block of configs and ensemble specs: its keys, defaults and canonical form.

postprocess/steps.py applies it; config validation (`select_postprocess`), ensemble specs and the search
read and write it through `normalise_spec`.
"""
from __future__ import annotations

import copy

from strokekit.vocabulary import LESION_NAMES

OVERLAP_RULES = ("argmax", "ischemic", "hemorrhagic")
DEFAULT_SPEC = {
    "threshold": None,
    "closing": 0,
    "overlap": "argmax",
    "min_area": 0,
    "keep_largest": False,
    "triplet": None,   # {"high": 0.8, "min_pixels": 50}
    "gate": None,      # 0.5, or {"ischemic": 0.4, "hemorrhagic": 0.6}
    "never_empty": True,  # phase 2: every test image holds a lesion (step 8)
}
PER_CLASS_KEYS = ("threshold", "closing", "min_area", "keep_largest")


def per_class(value, key: str) -> dict[str, object]:
    """One value for both lesion classes, or a dict naming each of them."""
    if isinstance(value, dict):
        if set(value) != set(LESION_NAMES):
            raise ValueError(f"post-processing {key!r} must name exactly {sorted(LESION_NAMES)}; got {sorted(value)}")
        return {name: value[name] for name in LESION_NAMES}
    return {name: value for name in LESION_NAMES}


def normalise_spec(spec: dict | None) -> dict:
    """Full canonical spec (every key, per-class values as {ischemic: .., hemorrhagic: ..}); unknown keys fail."""
    spec = {} if spec is None else dict(spec)
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise KeyError(f"unknown post-processing key(s) {unknown}; valid keys: {sorted(DEFAULT_SPEC)}")
    out = copy.deepcopy(DEFAULT_SPEC)
    out.update(copy.deepcopy(spec))
    for key in PER_CLASS_KEYS:
        out[key] = per_class(out[key], key)
    out["threshold"] = {k: None if v is None else float(v) for k, v in out["threshold"].items()}
    out["closing"] = {k: int(v) for k, v in out["closing"].items()}
    out["min_area"] = {k: int(v) for k, v in out["min_area"].items()}
    out["keep_largest"] = {k: bool(v) for k, v in out["keep_largest"].items()}
    out["never_empty"] = bool(out["never_empty"])
    if out["overlap"] not in OVERLAP_RULES:
        raise ValueError(f"post-processing overlap rule {out['overlap']!r}; valid: {list(OVERLAP_RULES)}")
    if out["gate"] is not None:
        out["gate"] = {k: float(v) for k, v in per_class(out["gate"], "gate").items()}
    if out["triplet"] is not None:
        triplet = dict(out["triplet"])
        if set(triplet) != {"high", "min_pixels"}:
            raise KeyError(f"post-processing triplet needs keys ['high', 'min_pixels']; got {sorted(triplet)}")
        out["triplet"] = {"high": {k: float(v) for k, v in per_class(triplet["high"], "triplet.high").items()},
                          "min_pixels": {k: int(v) for k, v in
                                         per_class(triplet["min_pixels"], "triplet.min_pixels").items()}}
    return out
