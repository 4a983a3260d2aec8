"""The ensemble spec: the YAML file ensemble.py writes and infer.py reads — members, blend, TTA, decisions.

Every decision taken on OOF data lives here (which folds of which config, blend weights, the threshold or
the post-processing, the OOF figures that chose them); infer.py derives nothing again. Checkpoint paths are
stored relative to the spec's folder (or absolute) and resolved against it when read; a spec is a file that
travels, so a path that leads outside `allowed_roots` (the spec's folder, the folder above it, the current
directory) is refused unless the caller allows it (infer.py --allow-outside). `combine` is the one
blend used both on OOF (ensemble.py) and on test images (predict.py), so the two cannot drift apart; the
`stack` blend's level-2 model (its `stack` block) is applied by stacking.apply_model on both sides alike.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import rankdata

from strokekit import __version__
from strokekit.atomic import to_plain, write_text_atomic
from strokekit.config.postprocess import normalise_spec
from strokekit.ensembling.stacking import MODEL_KINDS, STACK
from strokekit.errors import UserError
from strokekit.vocabulary import TASKS
from strokekit.vocabulary import resolve_flips, resolve_scales

FORMAT = "strokekit-ensemble-v1"
CLASSIFIER_BLENDS = ("mean", "weighted", "vote", "rank")
SEG_BLENDS = ("mean", "weighted")


class SpecError(UserError, ValueError):
    """An ensemble spec that infer.py cannot run as written; the message names the file and the fix."""


# --------------------------------------------------------------------------- the blend


def member_scores(probs: np.ndarray, method: str, thresholds=None) -> np.ndarray:
    """What each member contributes to the blend, stacked on axis 0 (M, N) or (M, N, 3, H, W).

    mean / weighted: the probabilities; rank: each member's ranks over the images blended together,
    scaled to (0, 1]; vote: 1 where a member's probability reaches its own threshold, else 0.
    """
    probs = np.asarray(probs, dtype=np.float64 if np.ndim(probs) <= 2 else np.float32)
    if method in ("mean", "weighted"):
        return probs
    if probs.ndim != 2:
        raise SpecError(f"blend {method!r} is for image-level probabilities; segmentation blends: {SEG_BLENDS}")
    if method == "rank":
        return rankdata(probs, axis=1) / probs.shape[1]
    if method == "vote":
        t = np.asarray(thresholds, dtype=float).reshape(-1, 1)
        if t.shape[0] != probs.shape[0]:
            raise SpecError(f"vote blend needs one threshold per member ({probs.shape[0]}), got {t.shape[0]}")
        return (probs >= t).astype(np.float64)
    raise SpecError(f"unknown blend {method!r}; valid: {list(CLASSIFIER_BLENDS)}")


def combine(probs, method: str = "mean", weights=None, thresholds=None) -> np.ndarray:
    """Weighted mean of member_scores over members (equal weights unless given): the ensemble's score.

    With equal weights this is selection.blend's mean / rank / vote; greedy selection gives the weights.
    """
    scores = member_scores(probs, method, thresholds)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(scores),) or (w < 0).any() or w.sum() <= 0:
        raise SpecError(f"blend weights {w.tolist()} must be one non-negative weight per member, not all zero")
    w = (w / w.sum()).reshape((-1,) + (1,) * (scores.ndim - 1))
    return (scores * w).sum(axis=0).astype(scores.dtype)


# --------------------------------------------------------------------------- writing


def checkpoint_ref(checkpoint: str | os.PathLike, spec_path: str | os.PathLike, absolute: bool = False) -> str:
    """How a checkpoint is written in the spec: relative to the spec's folder, or absolute."""
    checkpoint = Path(checkpoint).resolve()
    if absolute:
        return str(checkpoint)
    return os.path.relpath(checkpoint, Path(spec_path).resolve().parent)


def write_spec(spec: dict, path: str | os.PathLike) -> Path:
    """Validate `spec` (checkpoint paths as checkpoint_ref wrote them) and write it as YAML, atomically."""
    path = Path(path)
    spec = to_plain({"format": FORMAT, "kit_version": __version__,
                   "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), **spec})
    validate_spec(spec, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=110))
    return path


# --------------------------------------------------------------------------- reading


def read_spec(path: str | os.PathLike, allow_outside: bool = False) -> dict:
    """Load and validate a spec; every member gains `checkpoint_paths`, absolute and existing."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"ensemble spec {path} does not exist (write one with ensemble.py, or give a model "
                        "folder from export.py)")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:  # a python/* tag is a YAMLError too: nothing runs
        raise SpecError(f"{path}: not a readable ensemble spec YAML ({err})".replace("\n", " ")) from None
    validate_spec(spec, path)
    for member in [*spec["members"], *((spec.get("stack") or {}).get("seg_members") or [])]:
        member["checkpoint_paths"] = [str(resolve_checkpoint(c, path, allow_outside)) for c in member["checkpoints"]]
    spec["path"] = str(path.resolve())
    return spec


def allowed_roots(spec_path: str | os.PathLike) -> list[Path]:
    """Folders a spec's checkpoints may lie in: its own folder, the one above (ensembles/ beside runs/), the cwd."""
    spec_dir = Path(spec_path).resolve().parent
    return [spec_dir, spec_dir.parent, Path(os.path.abspath(os.getcwd())), Path.cwd().resolve()]


def resolve_checkpoint(ref: str, spec_path: str | os.PathLike, allow_outside: bool = False) -> Path:
    checkpoint = Path(ref)
    if not checkpoint.is_absolute():
        checkpoint = Path(spec_path).resolve().parent / checkpoint
    where = Path(os.path.abspath(checkpoint))  # '..' collapsed as written; symlinks inside a root are trusted
    roots = allowed_roots(spec_path)
    if not allow_outside and not any(where.is_relative_to(root) for root in roots):
        raise SpecError(f"{spec_path}: checkpoint {ref} leads to {where}, outside the folders a spec may name "
                        f"({', '.join(dict.fromkeys(str(r) for r in roots))}); move the checkpoints there, or "
                        "pass --allow-outside if you trust this spec")
    if not checkpoint.is_file():
        raise SpecError(f"{spec_path}: checkpoint {ref} not found (looked at {checkpoint}); paths in a spec "
                        "are relative to the spec's folder — move them together or rerun ensemble.py")
    return checkpoint.resolve()


def validate_spec(spec, path) -> None:
    """Raise SpecError listing every problem with a spec's structure (not its checkpoints' existence)."""
    problems = []
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: an ensemble spec is a YAML mapping")
    if spec.get("format") != FORMAT:
        problems.append(f"format is {spec.get('format')!r}, expected {FORMAT!r}")
    task = spec.get("task")
    if task not in TASKS:
        problems.append(f"task {task!r} must be one of {list(TASKS)}")
    blends = SEG_BLENDS if task == "seg" else (*CLASSIFIER_BLENDS, STACK)
    if spec.get("blend") not in blends:
        problems.append(f"blend {spec.get('blend')!r} must be one of {list(blends)} for task {task}")
    try:
        resolve_flips(spec.get("tta"))
    except (KeyError, ValueError) as err:
        problems.append(f"tta: {err}")
    try:
        resolve_scales(spec.get("tta_scales"))  # absent: [1.0] (specs written before multi-scale TTA)
    except (KeyError, ValueError) as err:
        problems.append(f"tta_scales: {err}")
    problems += _member_problems(spec.get("members"), spec.get("blend"))
    problems += _decision_problems(spec, task)
    if spec.get("blend") == STACK:
        problems += _stack_problems(spec.get("stack"))
    if problems:
        raise SpecError(f"{path}: " + "; ".join(problems))


def _member_problems(members, blend) -> list[str]:
    if not isinstance(members, list) or not members:
        return ["members must be a non-empty list"]
    problems = []
    for i, member in enumerate(members):
        if not isinstance(member, dict):
            problems.append(f"member {i} is not a mapping")
            continue
        name = member.get("name", f"#{i}")
        if not member.get("checkpoints"):
            problems.append(f"member {name} lists no checkpoints")
        weight = member.get("weight")
        if not isinstance(weight, (int, float)) or weight < 0:
            problems.append(f"member {name}: weight {weight!r} must be a number >= 0")
        if blend == "vote" and not isinstance(member.get("threshold"), (int, float)):
            problems.append(f"member {name}: the vote blend needs its own threshold")
    if not any(isinstance(m, dict) and isinstance(m.get("weight"), (int, float)) and m["weight"] > 0
               for m in members):
        problems.append("every member weight is 0")
    return problems


def _stack_problems(stack) -> list[str]:
    """A stack blend's level-2 block: its feature names, a stored model of a known kind, its seg members."""
    if not isinstance(stack, dict):
        return ["blend stack needs a `stack` mapping (features, model) written by ensemble.py --blend stack"]
    problems = []
    features = stack.get("features")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        problems.append("stack.features must be a non-empty list of feature names")
    model = stack.get("model")
    if not isinstance(model, dict) or model.get("kind") not in MODEL_KINDS:
        problems.append(f"stack.model must be a mapping with kind one of {list(MODEL_KINDS)}")
    seg = stack.get("seg_members") or []
    if not isinstance(seg, list) or any(not isinstance(m, dict) or not m.get("checkpoints") for m in seg):
        problems.append("stack.seg_members must be a list of members with checkpoints")
    return problems


def _decision_problems(spec: dict, task) -> list[str]:
    if task == "seg":
        try:
            normalise_spec(spec.get("postprocess"))
        except (KeyError, ValueError) as err:
            return [f"postprocess: {err}"]
        return []
    threshold = (spec.get("threshold") or {}).get("value")
    if not isinstance(threshold, (int, float)):
        return ["a classifier spec needs threshold.value (the decision threshold tuned on OOF)"]
    return []


def member_weights(spec: dict) -> np.ndarray:
    return np.asarray([float(m["weight"]) for m in spec["members"]])


def member_thresholds(spec: dict) -> np.ndarray | None:
    if spec["blend"] != "vote":
        return None
    return np.asarray([float(m["threshold"]) for m in spec["members"]])
