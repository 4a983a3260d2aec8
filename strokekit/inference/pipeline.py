"""The one inference pipeline: loaded role ensembles -> per-image decisions. infer.py writes them (submit.py),
strokekit.Predictor returns them; neither assembles a decision itself.

Roles (modelfolder.ROLES): `stroke` gives P(stroke) and the phase-1 label at its OOF-tuned threshold (a
stroke spec, or a seg spec whose seg_classifier targets stroke); `type` gives P(hemorrhagic) (a type spec);
`seg` gives the phase-2 class map (decide.phase2_class_map: the spec's post-processing, the fallback), and
the type (types.csv's): from the type ensemble, else the seg spec's type seg_classifier, else the mask. A seg
spec whose post-processing gates its classes (ensemble.py --gate-runs) compares them with the probabilities
of its gate's ensemble: a stroke ensemble (P(stroke), both classes) or a type ensemble (each class its own
type probability) — the `gate` given, else the role of that task.

Every role is checked when the pipeline is built, before any image is read and any file is written: a
stroke role that cannot give P(stroke), a seg role that is not a seg spec, a type role that is not a type
spec and a gated seg spec without its gate's ensemble are refused (SpecError: which ensemble is missing, or
of which task it is).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from strokekit.config.postprocess import normalise_spec
from strokekit.ensembling.seg_classifier import seg_classifier_prob
from strokekit.ensembling.spec import SpecError
from strokekit.postprocess.decide import phase1_labels, phase2_class_map, type_class, type_decision

ROLE_FLAGS = {"stroke": "--ensemble (phase 1)", "seg": "--ensemble (phase 2)", "type": "--type-ensemble"}


@dataclass
class ImageDecision:
    """One image's decisions; None where no loaded ensemble answers that question."""
    image_id: int
    stroke_prob: float | None = None     # blended P(stroke) (probs.csv `prob`)
    stroke: bool | None = None           # at the stroke spec's threshold (asama1.txt, probs.csv `label`)
    member_probs: dict | None = None     # {member name: P(stroke)} of a stroke spec (probs.csv `prob:<name>`)
    p_hemorrhagic: float | None = None   # from type_source (types.csv)
    type_source: str | None = None       # type_ensemble | seg_classifier | mask
    type: str | None = None              # ischemic | hemorrhagic | none (an empty mask, type from the mask)
    class_map: np.ndarray | None = None  # (H, W) uint8 at the image's own size: 0, 1 ischemic, 2 hemorrhagic
    fallback: bool | None = None         # the class map was drawn by the phase-2 fallback
    probs: np.ndarray | None = None      # (3, H, W) float32 blended seg probabilities, when kept

    @property
    def type_probs(self) -> dict | None:
        if self.p_hemorrhagic is None:
            return None
        return {"ischemic": float(1.0 - self.p_hemorrhagic), "hemorrhagic": float(self.p_hemorrhagic)}


def needs_gate(seg_spec: dict) -> bool:
    """Whether a seg spec's post-processing gates its classes on an image-level probability."""
    return normalise_spec(seg_spec.get("postprocess"))["gate"] is not None


def gate_kind(seg_spec: dict) -> str:
    """'stroke' (both classes gated on P(stroke)) or 'type' (each class on its type probability)."""
    return (seg_spec.get("postprocess_search") or {}).get("gate_kind") or "stroke"


def gate_value(prob: float, kind: str):
    """What phase2_class_map's image_prob takes for a gate of `kind`."""
    return float(prob) if kind == "stroke" else {"ischemic": 1.0 - float(prob), "hemorrhagic": float(prob)}


def decision_threshold(spec: dict) -> float:
    """A classifier spec's threshold, or a seg spec's seg_classifier threshold."""
    return float(spec["threshold"]["value"] if spec["task"] != "seg" else
                 spec["seg_classifier"]["threshold"]["threshold"])


def require_gate(seg, gate) -> None:
    """SpecError when the seg spec is gated and `gate` is not an ensemble of the gate's task."""
    if not needs_gate(seg.spec):
        return
    kind = gate_kind(seg.spec)
    if gate is None or gate.task != kind:
        sources = (seg.spec.get("postprocess_search") or {}).get("gate_source")
        got = "" if gate is None else f"; {gate.spec['path']} is a {gate.task} spec"
        raise SpecError(f"{seg.spec['path']}: its post-processing gates the lesion classes on the "
                        f"{kind} classifier's probabilities (tuned on the OOF of {sources or 'a ' + kind + ' run'})"
                        f"; pass a {kind} spec or model folder over those runs with --gate-ensemble{got}")


def check_role(role: str, predictor) -> None:
    """SpecError when `predictor` cannot answer `role` (checked before any image is read)."""
    spec, task = predictor.spec, predictor.task
    if role == "stroke":
        clf = spec.get("seg_classifier") or {}
        if task == "stroke" or (task == "seg" and clf.get("target") == "stroke"):
            return
        hint = (" (ensemble.py --seg-classifier stroke gives a seg spec phase-1 decisions)" if task == "seg"
                else "")
        raise SpecError(f"{spec['path']}: phase 1 needs a stroke spec, or a seg spec with a stroke "
                        f"seg_classifier; this is a {task} spec{hint}")
    if role == "seg" and task != "seg":
        raise SpecError(f"{spec['path']}: phase 2 needs a seg spec (its masks); this is a {task} spec"
                        + (", which gives phase 1 (--phase 1)" if task == "stroke" else ""))
    if role == "type" and task != "type":
        raise SpecError(f"{ROLE_FLAGS['type']} {spec['path']} is a {task} spec, not a type spec")


class Pipeline:
    """Role ensembles (EnsemblePredictors: `stroke`, `type`, `seg`, any may be absent), checked and held with
    the phase-2 fallback settings; `decide_phase1` / `iter_phase2` / `decide` give ImageDecisions.

    `gate`: the ensemble a gated seg spec compares with its gate (default: the role of the gate's task).
    Rows are index rows (image_id, png / dicom, or `hu` arrays) as EnsemblePredictor takes them.
    """

    def __init__(self, roles: dict, fallback: bool = True, fallback_fraction: float = 0.5,
                 fallback_max_area: float = 0.02, gate=None):
        self.roles = {role: p for role, p in roles.items() if p is not None}
        for role, predictor in self.roles.items():
            check_role(role, predictor)
        self.fallback, self.fallback_fraction, self.fallback_max_area = fallback, fallback_fraction, fallback_max_area
        seg = self.roles.get("seg")
        self.gate_kind = gate_kind(seg.spec) if seg is not None and needs_gate(seg.spec) else None
        self.gate = None
        if self.gate_kind is not None:
            self.gate = gate if gate is not None else self.roles.get(self.gate_kind)
            require_gate(seg, self.gate)

    def predictors(self) -> list:
        """The distinct loaded ensembles (a type gate may be the type role)."""
        found = [*self.roles.values(), *([self.gate] if self.gate is not None else [])]
        return [p for k, p in enumerate(found) if all(p is not q for q in found[:k])]

    # ------------------------------------------------------------------ image-level probabilities

    def _classifier(self, predictor, rows, target: str, cache: dict) -> dict:
        """{image_id, prob, members?} of a classifier ensemble, or of a seg spec's `target` seg_classifier;
        computed once per call of decide / iter_phase2 (`cache`) however many roles use it."""
        if id(predictor) in cache:
            return cache[id(predictor)]
        if predictor.task != "seg":
            result = predictor.predict_classifier(rows)
        else:
            clf = predictor.spec.get("seg_classifier")
            if not clf or clf["target"] != target:
                raise SpecError(f"{predictor.spec['path']}: a seg spec gives {target} decisions only with a "
                                f"seg_classifier for {target} (ensemble.py --seg-classifier {target})")
            ids, probs = [], []
            for image_id, p in predictor.iter_seg(rows):
                ids.append(image_id)
                probs.append(seg_classifier_prob(p, clf))
            result = {"image_id": np.asarray(ids, dtype=np.int64), "prob": np.asarray(probs)}
        cache[id(predictor)] = result
        return result

    def decide_phase1(self, rows, cache: dict | None = None) -> list[ImageDecision]:
        """P(stroke), the label at the stroke spec's threshold and each member's P(stroke), image by image."""
        predictor = self.roles.get("stroke")
        if predictor is None:
            raise SpecError("no stroke ensemble: phase 1 needs a stroke spec, or a seg spec with a stroke "
                            "seg_classifier")
        result = self._classifier(predictor, rows, "stroke", {} if cache is None else cache)
        labels = phase1_labels(result["prob"], self.stroke_threshold)
        names = [m["name"] for m in predictor.spec["members"]]
        members = result.get("members")
        decisions = []
        for k, (image_id, prob, label) in enumerate(zip(result["image_id"], result["prob"], labels)):
            decisions.append(ImageDecision(
                image_id=int(image_id), stroke_prob=float(prob), stroke=bool(label),
                member_probs=None if members is None else {n: float(m[k]) for n, m in zip(names, members)}))
        return decisions

    @property
    def stroke_threshold(self) -> float | None:
        stroke = self.roles.get("stroke")
        return None if stroke is None else decision_threshold(stroke.spec)

    def type_source(self) -> tuple[str | None, float | None]:
        """Where the per-image type comes from and its threshold: type_ensemble, the seg spec's type
        seg_classifier, the mask (threshold None), or (None, None) with neither a type nor a seg ensemble."""
        if "type" in self.roles:
            return "type_ensemble", decision_threshold(self.roles["type"].spec)
        seg = self.roles.get("seg")
        if seg is None:
            return None, None
        clf = seg.spec.get("seg_classifier")
        if clf and clf["target"] == "type":
            return "seg_classifier", float(clf["threshold"]["threshold"])
        return "mask", None

    def _gate_probs(self, rows, cache: dict) -> dict:
        """{image_id: phase2_class_map's image_prob} of a gated seg spec, else {}."""
        if self.gate_kind is None:
            return {}
        result = self._classifier(self.gate, rows, self.gate_kind, cache)
        return {int(i): gate_value(p, self.gate_kind) for i, p in zip(result["image_id"], result["prob"])}

    # ------------------------------------------------------------------ phase 2

    def iter_phase2(self, rows, keep_probs: bool = False, cache: dict | None = None) -> Iterator[ImageDecision]:
        """Per image, in order: class map (post-processing, gate, fallback), type and P(hemorrhagic)."""
        seg = self.roles.get("seg")
        if seg is None:
            raise SpecError("no seg ensemble: phase 2 needs a seg spec")
        cache = {} if cache is None else cache
        source, threshold = self.type_source()
        by_id = {}
        if source == "type_ensemble":
            result = self._classifier(self.roles["type"], rows, "type", cache)
            by_id = dict(zip(result["image_id"].tolist(), result["prob"].tolist()))
        gate = self._gate_probs(rows, cache)
        for image_id, probs in seg.iter_seg(rows):
            p_hem = by_id.get(image_id)
            if source == "seg_classifier":
                p_hem = float(seg_classifier_prob(probs, seg.spec["seg_classifier"]))
            class_map, used = phase2_class_map(probs, seg.spec["postprocess"], self.fallback, self.fallback_fraction,
                                               type_class(p_hem, threshold), self.fallback_max_area,
                                               gate.get(image_id))
            yield ImageDecision(image_id=int(image_id), p_hemorrhagic=p_hem, type_source=source,
                                type=type_decision(class_map, p_hem, threshold), class_map=class_map,
                                fallback=bool(used), probs=probs if keep_probs else None)

    def decide(self, rows, keep_probs: bool = False) -> list[ImageDecision]:
        """Everything the loaded roles answer, one ImageDecision per row (in order): phase 1's decisions with
        a stroke role, phase 2's with a seg role, the type alone with only a type role."""
        rows = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        decisions = {int(r["image_id"]): ImageDecision(image_id=int(r["image_id"])) for r in rows}
        if not rows:
            return []
        cache: dict = {}
        if "stroke" in self.roles:
            for d in self.decide_phase1(rows, cache):
                decisions[d.image_id] = d
        if "seg" in self.roles:
            for d in self.iter_phase2(rows, keep_probs, cache):
                first = decisions[d.image_id]
                d.stroke_prob, d.stroke, d.member_probs = first.stroke_prob, first.stroke, first.member_probs
                decisions[d.image_id] = d
        elif "type" in self.roles:
            result = self._classifier(self.roles["type"], rows, "type", cache)
            _, threshold = self.type_source()
            for image_id, p in zip(result["image_id"].tolist(), result["prob"].tolist()):
                d = decisions[int(image_id)]
                d.p_hemorrhagic, d.type_source = float(p), "type_ensemble"
                d.type = type_decision(None, p, threshold)
        return [decisions[int(r["image_id"])] for r in rows]
