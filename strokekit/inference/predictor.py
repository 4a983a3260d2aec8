"""The Python API: `Predictor("models/<name>").predict(x)` -> stroke probability, type, class map.

    from strokekit import Predictor
    p = Predictor("models/dpn")                      # a model folder (export.py) or ensemble spec YAML(s)
    r = p.predict("YARISMA_2/DICOM/123.dcm")         # a PNG / DICOM path, a 2-D HU array, or a list / batch
    r.stroke_prob, r.stroke, r.type_probs, r.type, r.class_map      # r.probs with predict(..., probs=True)

Every input goes through EnsemblePredictor (predict.py), the path infer.py runs, and the same decisions
(decide.py, seg_classifier.py) infer.py applies, so a Predictor's class maps are infer.py's masks. What
each answer comes from: the `stroke` ensemble (a stroke spec, or a seg spec's stroke seg_classifier) gives
stroke_prob and stroke (at its OOF-tuned threshold); the `type` ensemble (else the seg spec's type
seg_classifier) gives type_probs; the `seg` ensemble gives class_map (0 background, 1 ischemic, 2
hemorrhagic) with the phase-2 fallback, and the type (as types.csv: from type_probs, else the mask).
An answer whose ensemble the model lacks is None.

HU arrays: DICOM-trained members window them with their configs' windows, as they window a DICOM; members
trained on PNG slices see them through `png_window` (default the brain window 40/80 HU the slice PNGs
were exported with, readers.BRAIN_WINDOW), and so do DICOM paths given to them — pass png_window=None to
refuse HU input for those members. A PNG path given to a DICOM-trained member is refused (no HU in it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.data.readers import BRAIN_WINDOW, BadInputError
from strokekit.postprocess.decide import phase1_labels, phase2_class_map, type_class, type_decision
from strokekit.ensembling.spec import SpecError, read_spec
from strokekit.inference.modelfolder import ROLES, is_model_folder, read_model_folder, spec_role
from strokekit.inference.predict import EnsemblePredictor
from strokekit.ensembling.seg_classifier import seg_classifier_prob
from strokekit.inference.submit import (decision_threshold, gate_kind, gate_value, image_probs, needs_gate,
                              require_gate)

IMAGE_SUFFIXES = {".png": "png", ".dcm": "dicom"}


@dataclass
class Prediction:
    """One image's answers; None where the model has no ensemble for that question."""
    source: str
    stroke_prob: float | None = None
    stroke: bool | None = None
    type_probs: dict | None = None      # {"ischemic": p, "hemorrhagic": p}
    type: str | None = None             # ischemic | hemorrhagic | none (empty mask) — as infer.py's types.csv
    class_map: np.ndarray | None = None  # (H, W) uint8 at the image's own size
    probs: np.ndarray | None = None      # (3, H, W) float32 blended probabilities, with probs=True
    fallback: bool | None = None        # the class map was drawn by the phase-2 fallback


class Predictor:
    """A model folder or ensemble spec(s), loaded once; `predict` runs images through them."""

    def __init__(self, model: str | os.PathLike | list, device: str | None = None, batch_size: int | None = None,
                 amp: str | None = None, tta: list[str] | str | None = None, fallback: bool = True,
                 fallback_fraction: float = 0.5, fallback_max_area: float = 0.02,
                 png_window: tuple[float, float] | None = BRAIN_WINDOW, allow_outside: bool = False):
        flips = tta.split(",") if isinstance(tta, str) else tta
        self.ensembles: dict[str, EnsemblePredictor] = {}
        for role, spec in self._specs(model, allow_outside).items():
            self.ensembles[role] = EnsemblePredictor(spec, device=device, flips=flips, batch_size=batch_size,
                                                     amp=amp)
        self.fallback, self.fallback_fraction, self.fallback_max_area = fallback, fallback_fraction, fallback_max_area
        self.png_window = None if png_window is None else tuple(float(v) for v in png_window)

    @staticmethod
    def _specs(model, allow_outside: bool) -> dict[str, dict]:
        sources = list(model) if isinstance(model, (list, tuple)) else [model]
        specs: dict[str, dict] = {}
        for source in sources:
            found = read_model_folder(source) if is_model_folder(source) else \
                {spec_role(s): s for s in [read_spec(source, allow_outside)]}
            for role, spec in found.items():
                if role in specs:
                    raise SpecError(f"two ensembles answer {role!r}: {specs[role]['path']} and {spec['path']}")
                specs[role] = spec
        return {role: specs[role] for role in ROLES if role in specs}

    @property
    def device(self):
        return next(iter(self.ensembles.values())).device

    def predict(self, x, probs: bool = False):
        """A Prediction for one input (path, 2-D HU array, index row dict), a list for a batch (list, tuple,
        (N, H, W) array or a DataFrame of index rows with png / dicom columns)."""
        if not isinstance(x, (str, os.PathLike, dict, list, tuple, pd.DataFrame, np.ndarray)):
            x = np.asarray(x)  # a torch tensor or another array-like of HU values
        single = isinstance(x, (str, os.PathLike, dict)) or (isinstance(x, np.ndarray) and x.ndim == 2)
        rows = self.rows([x] if single else x)
        results = [Prediction(source=row["source"]) for row in rows]
        if rows:
            self._stroke(rows, results)
            p_hem, type_threshold = self._type(rows, results)
            self._seg(rows, results, p_hem, type_threshold, probs)
        return results[0] if single else results

    def rows(self, items) -> list[dict]:
        """Input rows for EnsemblePredictor: image_id = position; files as `png` / `dicom`, arrays as `hu`."""
        if isinstance(items, pd.DataFrame):
            items = items.to_dict("records")
        elif isinstance(items, np.ndarray):
            if items.ndim != 3:
                raise ValueError(f"an array batch is (N, H, W) HU values, got shape {items.shape}")
            items = list(items)
        return [self._row(k, item) for k, item in enumerate(items)]

    def _row(self, k: int, item) -> dict:
        if isinstance(item, dict):  # an index row: NaN / None / "" = no such file
            png, dicom = (str(v) if isinstance(v, (str, os.PathLike)) and str(v) else ""
                          for v in (item.get("png"), item.get("dicom")))
            return {"png_window": self.png_window, **item, "png": png, "dicom": dicom, "image_id": k,
                    "source": dicom or png or f"row[{k}]"}
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            kind = IMAGE_SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise BadInputError(path, "not a .png or .dcm file")
            if not path.is_file():
                raise BadInputError(path, "no such file")
            return {"image_id": k, "png": "", "dicom": "", kind: str(path), "png_window": self.png_window,
                    "source": str(path)}
        hu = np.asarray(item)
        if hu.ndim != 2 or not np.issubdtype(hu.dtype, np.number):
            raise BadInputError(f"input {k}", f"expected a path or a 2-D array of HU values, got {type(item).__name__}"
                                f" of shape {getattr(hu, 'shape', None)}")
        return {"image_id": k, "png": "", "dicom": "", "hu": hu.astype(np.float32), "png_window": self.png_window,
                "source": f"array[{k}]"}

    def _stroke(self, rows: list[dict], results: list[Prediction]) -> None:
        ens = self.ensembles.get("stroke")
        if ens is None:
            return
        prob, threshold = image_probs(ens, rows, "stroke")["prob"], decision_threshold(ens.spec)  # as infer.py
        for result, p, label in zip(results, prob, phase1_labels(prob, threshold)):
            result.stroke_prob, result.stroke = float(p), bool(label)

    def _type(self, rows: list[dict], results: list[Prediction]) -> tuple[list, float | None]:
        """P(hemorrhagic) per image from the type ensemble, and its threshold (None, None without one)."""
        ens = self.ensembles.get("type")
        if ens is None:
            return [None] * len(rows), None
        prob = ens.predict_classifier(rows)["prob"]
        for result, p in zip(results, prob):
            result.type_probs = {"ischemic": float(1.0 - p), "hemorrhagic": float(p)}
        return [float(p) for p in prob], decision_threshold(ens.spec)

    @staticmethod
    def _gate(kind: str | None, result: Prediction, p_hemorrhagic):
        """The gate's image-level probability for phase2_class_map (None for an ungated spec)."""
        if kind is None:
            return None
        return gate_value(result.stroke_prob if kind == "stroke" else p_hemorrhagic, kind)

    def _seg(self, rows: list[dict], results: list[Prediction], p_hem: list, type_threshold, keep: bool) -> None:
        ens = self.ensembles.get("seg")
        if ens is None:
            for result, p in zip(results, p_hem):
                result.type = None if p is None else ("hemorrhagic" if p >= type_threshold else "ischemic")
            return
        kind = gate_kind(ens.spec) if needs_gate(ens.spec) else None  # a gated seg spec: its classifier's probs
        require_gate(ens, self.ensembles.get(kind) if kind else None)
        clf = ens.spec.get("seg_classifier") or {}
        own_type = type_threshold is None and clf.get("target") == "type"
        threshold = float(clf["threshold"]["threshold"]) if own_type else type_threshold
        for image_id, probs in ens.iter_seg(rows):
            result, p = results[image_id], p_hem[image_id]
            if own_type:
                p = seg_classifier_prob(probs, clf)
                result.type_probs = {"ischemic": float(1.0 - p), "hemorrhagic": float(p)}
            class_map, used = phase2_class_map(probs, ens.spec["postprocess"], self.fallback,
                                               self.fallback_fraction, type_class(p, threshold),
                                               self.fallback_max_area, self._gate(kind, result, p_hem[image_id]))
            result.class_map, result.fallback = class_map, bool(used)
            result.type = type_decision(class_map, p, threshold)
            result.probs = probs if keep else None
