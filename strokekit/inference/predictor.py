"""The Python API: `Predictor("models/<name>").predict(x)` -> stroke probability, type, class map.

    from strokekit import Predictor
    p = Predictor("models/dpn")                      # a model folder (export.py) or ensemble spec YAML(s)
    p = Predictor.from_pretrained("org/stroke-dpn")  # ... or a hub repository holding a model folder (hub.py)
    r = p.predict("YARISMA_2/DICOM/123.dcm")         # a PNG / DICOM path, a 2-D HU array, or a list / batch
    r.stroke_prob, r.stroke, r.type_probs, r.type, r.class_map      # r.probs with predict(..., probs=True)

Every input goes through the pipeline infer.py runs (pipeline.py: EnsemblePredictor's probabilities, the
decisions of decide.py and seg_classifier.py), so a Predictor's answers are infer.py's files: this module
only turns paths, arrays and index rows into the pipeline's rows and its decisions into Predictions. What
each answer comes from: the `stroke` ensemble (a stroke spec, or a seg spec's stroke seg_classifier) gives
stroke_prob and stroke (at its OOF-tuned threshold); the `type` ensemble (else the seg spec's type
seg_classifier) gives type_probs; the `seg` ensemble gives class_map (0 background, 1 ischemic, 2
hemorrhagic) with the phase-2 fallback, and the type (as types.csv: from type_probs, else the mask).
An answer whose ensemble the model lacks is None.

HU arrays: DICOM-trained members window them with their configs' windows, as they window a DICOM; members
trained on PNG slices see them through `png_window` (default the brain window 40/80 HU the slice PNGs
were exported with, readers.BRAIN_WINDOW), and so do DICOM paths given to them — pass png_window=None to
refuse HU input for those members. A PNG path given to a DICOM-trained member is refused (no HU in it).

2.5D models (trained with `neighbours`: model.json's input records it) read each slice with its neighbours,
looked up among the images of one predict call: give a series' DICOM paths (or index rows) together. A
single HU array (or a batch of them) has no series: such a model refuses it (NeighbourError) rather than
guess; an image without neighbours in the call repeats itself, as in training (data/neighbours.py).

A model folder is refused when its files do not match their recorded sha256 (export.py --verify's check);
`expect_sha256` pins its manifest.json's sha256 too. These hashes are integrity checks, not signatures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.data.badinput import BadInputError

from strokekit.data.readers import BRAIN_WINDOW
from strokekit.ensembling.spec import SpecError, read_spec
from strokekit.inference.modelfolder import ROLES, is_model_folder, read_model_folder, spec_role
from strokekit.inference.pipeline import Pipeline
from strokekit.inference.predict import EnsemblePredictor

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
                 png_window: tuple[float, float] | None = BRAIN_WINDOW, allow_outside: bool = False,
                 expect_sha256: str | None = None, tta_scales: list[float] | str | None = None):
        flips = tta.split(",") if isinstance(tta, str) else tta
        self.ensembles: dict[str, EnsemblePredictor] = {}
        for role, spec in self._specs(model, allow_outside, expect_sha256).items():
            self.ensembles[role] = EnsemblePredictor(spec, device=device, flips=flips, batch_size=batch_size,
                                                     amp=amp, scales=tta_scales)
        self.pipeline = Pipeline(self.ensembles, fallback, fallback_fraction, fallback_max_area)
        self.fallback, self.fallback_fraction, self.fallback_max_area = fallback, fallback_fraction, fallback_max_area
        self.png_window = None if png_window is None else tuple(float(v) for v in png_window)
        self.source = ", ".join(str(m) for m in (model if isinstance(model, (list, tuple)) else [model]))

    @classmethod
    def from_pretrained(cls, repo_or_path: str | os.PathLike, revision: str | None = None, **kwargs) -> "Predictor":
        """A Predictor from a model folder: a local path, or a hub repository id (org/name) fetched with
        huggingface_hub.snapshot_download, from the hub cache when it holds it (no network) and downloaded only
        when HF_HUB_OFFLINE=0 (inference/hub.py). Checked as a local folder is (every sha256; expect_sha256
        pins manifest.json). kwargs: the constructor's (device, tta, expect_sha256, ...)."""
        from strokekit.inference.hub import resolve_model_source

        folder, source = resolve_model_source(repo_or_path, revision)
        if not is_model_folder(folder) or folder.suffix in (".yaml", ".yml"):
            raise SpecError(f"{source}: not a model folder (export.py writes one); Predictor(...) takes spec YAMLs")
        predictor = cls(folder, **kwargs)
        predictor.source = source
        return predictor

    def __repr__(self) -> str:
        parts = []
        for role, ens in self.ensembles.items():
            sizes = sorted({m.cfg.get("img_size") for m in ens.members})
            members = ", ".join(f"{m.name} ({m.cfg.get('model')}, {len(m.models)} ckpt)" for m in ens.members)
            parts.append(f"  {role}: {ens.task} ensemble of {members}; tta {','.join(ens.flips) or 'none'}; "
                         f"img_size {'/'.join(str(v) for v in sizes)}")
        return (f"Predictor(source={self.source!r}, tasks={list(self.ensembles)}, device={self.device})\n"
                + "\n".join(parts))

    @staticmethod
    def _specs(model, allow_outside: bool, expect_sha256: str | None = None) -> dict[str, dict]:
        sources = list(model) if isinstance(model, (list, tuple)) else [model]
        folders = [source for source in sources if is_model_folder(source)]
        if expect_sha256 is not None and len(folders) != 1:
            raise SpecError(f"expect_sha256 pins one model folder's manifest.json; {len(folders)} model folders "
                            "given")
        specs: dict[str, dict] = {}
        for source in sources:
            found = read_model_folder(source, expect_sha256=expect_sha256) if is_model_folder(source) else \
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
        results = [Prediction(source=row["source"], stroke_prob=d.stroke_prob, stroke=d.stroke,
                              type_probs=d.type_probs, type=d.type, class_map=d.class_map, probs=d.probs,
                              fallback=d.fallback)
                   for row, d in zip(rows, self.pipeline.decide(rows, keep_probs=probs))]
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
