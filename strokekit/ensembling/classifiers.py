"""What ensemble.py decides on OOF for the classifiers (stroke / type), and the run reading shared with seg.

A member is one config (`runs/<config>`): its OOF is every trained fold's OOF file joined, so each image
is predicted by the fold model that never saw it, and at test time the member averages the checkpoints of
its `top_k` best folds. Members are scored on the images all of them predicted; greedy forward selection
(selection.greedy_select) picks members and weights for the blend; the decision threshold is tuned on the
blended OOF (selection.tune_classifier_threshold). The ensemble is never worse on OOF than its best member:
if a blend scores lower, the best member alone is kept and the report says so. The `stack` blend fits a
level-2 model on the members' OOF probabilities (and segmenter runs' features) by nested CV (stacking.py).
"""
from __future__ import annotations

from functools import partial

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from strokekit.errors import InputFileError, SettingError
from strokekit.evaluation import bootstrap

from strokekit.ensembling import selection
from strokekit.ensembling.nested import nested_threshold_figures
from strokekit.ensembling.spec import CLASSIFIER_BLENDS, checkpoint_ref, combine, member_scores
from strokekit.ensembling.stacking import STACK, candidates_of, nested_stack, seg_features

CHECKPOINTS = ("best", "last")


@dataclass
class Run:
    """One config's run folder: its resolved config and, per trained fold, the checkpoint to use."""
    name: str
    path: Path
    cfg: dict
    checkpoints: dict[int, Path] = field(default_factory=dict)


def read_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> Run:
    """A run folder (runs/<config>) with fold<k>/{config.yaml, best.pt, oof.*}; fails naming what is missing."""
    if checkpoint not in CHECKPOINTS:
        raise SettingError(f"checkpoint {checkpoint!r}: choose one of {CHECKPOINTS}")
    run_dir = Path(run_dir)
    folds = selection.fold_dirs(run_dir)
    checkpoints, cfg = {}, None
    for fold_dir in folds:
        ckpt = fold_dir / f"{checkpoint}.pt"
        if not ckpt.is_file():
            raise InputFileError(f"{ckpt} is missing: has training of {fold_dir} finished?")
        if not (fold_dir / "done").exists():
            print(f"warning: {fold_dir} has no `done` marker; its OOF may be from an unfinished run")
        checkpoints[_fold_number(fold_dir)] = ckpt
        if cfg is None and (fold_dir / "config.yaml").is_file():
            cfg = yaml.safe_load((fold_dir / "config.yaml").read_text(encoding="utf-8"))
    if cfg is None:
        raise InputFileError(f"{run_dir}: no fold<k>/config.yaml (written by train.py)")
    name = run_dir.name if run_dir.name[:4] != "fold" else f"{run_dir.parent.name}/{run_dir.name}"
    return Run(name, run_dir, cfg, checkpoints)


def _fold_number(fold_dir: Path) -> int:
    return int(fold_dir.name[4:]) if fold_dir.name[4:].isdigit() else -1


def read_runs(run_dirs, task: str, checkpoint: str = "best") -> list[Run]:
    runs = [read_run(d, checkpoint) for d in run_dirs]
    wrong = [f"{r.path} ({r.cfg.get('task')})" for r in runs if r.cfg.get("task") != task]
    if wrong:
        raise selection.RunsError(f"--task {task}, but these runs trained another task: {', '.join(wrong)}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise selection.RunsError(f"two runs share a name: {names}; pass each config's run folder once")
    return runs


def fold_table(run: Run, scores: pd.DataFrame, chosen: list[int]) -> pd.DataFrame:
    """Per-fold OOF scores of one run with the folds kept for inference marked."""
    table = scores.copy()
    table.insert(0, "member", run.name)
    table["chosen"] = table["fold"].isin(chosen)
    return table


def member_entry(run: Run, folds: list[int], weight: float, spec_path, absolute: bool, **extra) -> dict:
    """A spec member: the config's chosen fold checkpoints (paths as the spec stores them) and weight."""
    return {"name": run.name, "run": checkpoint_ref(run.path, spec_path, absolute), "folds": folds,
            "checkpoints": [checkpoint_ref(run.checkpoints[f], spec_path, absolute) for f in folds],
            "weight": float(weight), "model": run.cfg.get("model"), **extra}


def choose_blend(members: dict[str, np.ndarray], blend: str, score_fn, greedy: bool,
                 thresholds: dict[str, float] | None = None) -> dict:
    """Members and weights for one blend method: greedy forward selection, or all members equally
    (`weighted` without greedy: weights proportional to each member's own OOF score)."""
    names = list(members)
    t = None if thresholds is None else np.asarray([thresholds[n] for n in names])
    scores = member_scores(np.stack([members[n] for n in names]), blend, t)
    if greedy:
        picked = selection.greedy_select(dict(zip(names, scores)), score_fn)
        weights = dict(zip(picked["members"], picked["weights"]))
        history = picked["history"]
    else:
        own = {n: max(float(score_fn(s)), 1e-6) for n, s in zip(names, scores)}
        weights = {n: (own[n] if blend == "weighted" else 1.0) for n in names}
        history = []
    w = np.asarray([weights.get(n, 0.0) for n in names])
    blended = combine(np.stack([members[n] for n in names]), blend, w, t)
    if blend == "mean" and len(set(w[w > 0].tolist())) > 1:
        blend = "weighted"  # greedy with replacement chose some members more than once
    return {"blend": blend, "weights": {n: float(weights.get(n, 0.0)) for n in names},
            "score": float(score_fn(blended)), "blended": blended, "history": history}


def guard_best_member(choice: dict, members: dict[str, np.ndarray], singles: dict[str, float]) -> dict:
    """Keep the blend only if it is at least as good on OOF as the best member alone."""
    best = max(singles, key=singles.get)
    if choice["score"] >= singles[best]:
        return choice
    return {"blend": "mean", "weights": {n: float(n == best) for n in members}, "score": singles[best],
            "blended": np.asarray(members[best], dtype=np.float64), "history": choice["history"],
            "note": f"blend {choice['blend']} scored {choice['score']:.4f} < best member {best} "
                    f"{singles[best]:.4f} on OOF: kept {best} alone"}


def keep_or_guard(choice: dict, members: dict, singles: dict[str, float], keep_blend: bool) -> dict:
    """guard_best_member, or with keep_blend (--keep-blend: a published system's vote or average) the asked
    blend kept whatever its OOF score, with a note when the best member alone scores higher."""
    if not keep_blend:
        return guard_best_member(choice, members, singles)
    best = max(singles.values())
    choice["note"] = "" if choice["score"] >= best else (
        f"kept blend {choice['blend']} ({choice['score']:.4f}) below the best member ({best:.4f}): --keep-blend")
    return choice


def keep_top_runs(members: dict, singles: dict, k: int | None) -> dict:
    """The k members (runs) with the best OOF score, the rest left out before blending (`--top-runs`: top-k
    of N independently trained runs, e.g. one config under several seeds); k=None keeps all."""
    if k is None:
        return members
    if k < 1:
        raise SettingError(f"--top-runs must be >= 1, got {k}")
    ranked = sorted(members, key=lambda name: (-singles[name], name))
    return {name: members[name] for name in ranked[:k]}


def build_classifier_spec(runs: list[Run], task: str, spec_path, metric: str = "auc", top_k: int | None = None,
                          blend: str = "mean", greedy: bool = False, objective: str = "f1",
                          target_recall: float = 0.97, tolerance: float = 0.005, tta=("none",), tta_scales=(1.0,),
                          absolute: bool = False, metric_options: dict | None = None,
                          keep_blend: bool = False, test_prior: float | None = None,
                          test_size: int | None = None, n_boot: int = 1000, seed: int = 0,
                          robust: str | None = None, top_runs: int | None = None,
                          stack_seg_runs: list[Run] | None = None,
                          stack_models=("logistic", "gbm"), group_of: dict | None = None,
                          test_patients: int | None = None, vote_threshold: float | None = None,
                          threshold_range: tuple[float, float] | None = None) -> tuple[dict, dict]:
    """(spec, report) for a stroke / type ensemble of `runs`; see the module docstring.

    keep_blend=True keeps the asked blend (e.g. a published system's majority vote) even when the best
    member alone scores higher on OOF; the spec's selection note then says by how much.
    test_prior: the test set's expected positive share, the final threshold is tuned for it (prior.py);
    test_size: images per bootstrap resample for the 95 % intervals of the headline figures (default:
    phase 1's 192 for stroke, phase 2's 97 for type); robust: the bootstrap statistic whose plateau
    gives the final threshold (selection.tune_classifier_threshold; None: the OOF curve's).
    blend="stack": a level-2 model by nested CV (stack_choice) on the members' probabilities and the
    features of `stack_seg_runs` (seg runs whose OOF covers the members' images), the inner CV choosing among
    the `stack_models` kinds' candidates. test_patients: resamples draw that many whole patients (their
    images from `group_of`, image_id -> patient) instead of test_size images. vote_threshold: every member
    votes (blend vote) at this probability instead of at its own tuned OOF threshold (a fastai model votes
    with its argmax: 0.5). threshold_range (lo, hi): every tuned threshold (the members' own, the final one,
    the nested estimate's) is searched in [lo, hi] only (selection.tune_classifier_threshold's bounds)."""
    options = dict(metric_options or {})
    score = lambda y, p: selection.classifier_score(y, p, metric, **options)
    tune_threshold = partial(selection.tune_classifier_threshold, bounds=threshold_range)
    oofs = {run.name: selection.load_oof(run.path) for run in runs}
    folds, tables = {}, []
    for run in runs:
        scores = selection.fold_scores(oofs[run.name], metric, **options)
        folds[run.name] = selection.top_k_folds(scores, top_k)
        tables.append(fold_table(run, scores, folds[run.name]))
    aligned = selection.align_members(oofs)
    y = aligned["target"].to_numpy()
    members = {run.name: aligned[run.name].to_numpy(dtype=np.float64) for run in runs}
    singles = {n: score(y, p) for n, p in members.items()}
    own_t = {n: vote_threshold if vote_threshold is not None else
             tune_threshold(y, p, objective, target_recall, tolerance)["threshold"]
             for n, p in members.items()}
    members = keep_top_runs(members, singles, top_runs)
    blends = CLASSIFIER_BLENDS if blend == "auto" else (blend,)
    if blend == STACK:
        tried = {STACK: stack_choice(members, y, outer_folds(aligned, oofs), aligned["image_id"].to_numpy(),
                                     stack_seg_runs or [], score, seed, spec_path, absolute, stack_models)}
    else:
        tried = {b: choose_blend(members, b, lambda s: score(y, s), greedy, own_t) for b in blends}
    choice = keep_or_guard(max(tried.values(), key=lambda c: c["score"]), members, singles, keep_blend)
    size = test_size or bootstrap.PHASE_TEST_SIZES[1 if task == "stroke" else 2]
    patients = bootstrap.Patients.of(group_of, aligned["image_id"], test_patients) if test_patients else None
    tuned = tune_threshold(y, choice["blended"], objective, target_recall, tolerance,
                                                test_prior, robust, size, n_boot, seed, patients)
    intervals = bootstrap.classifier_intervals(y, choice["blended"], tuned["threshold"], size, n_boot, seed,
                                               test_prior=test_prior, patients=patients)
    image_folds = outer_folds(aligned, oofs)
    def inner_tune(inner: np.ndarray) -> float:
        """The spec's threshold tuning on a subset of the images."""
        return tune_threshold(
            y[inner], choice["blended"][inner], objective, target_recall, tolerance, test_prior, robust, size,
            n_boot, seed, None if patients is None else bootstrap.Patients(patients.groups[inner], patients.count)
        )["threshold"]

    nested = (nested_threshold_figures(y, choice["blended"], image_folds, inner_tune, size, n_boot, seed,
                                       test_prior=test_prior, patients=patients)
              if len(np.unique(image_folds)) > 1 else None)
    used = [run for run in runs if choice["weights"].get(run.name, 0) > 0]
    spec = {"task": task, "blend": choice["blend"], "tta": list(tta), "tta_scales": list(tta_scales),
            "members": [member_entry(run, folds[run.name], choice["weights"][run.name], spec_path, absolute,
                                     threshold=float(own_t[run.name]),
                                     oof={metric: singles[run.name], "n_images": int(len(y))})
                        for run in used],
            "threshold": {"value": tuned.pop("threshold"), **tuned},
            "oof": {"metric": metric, "metric_options": options, "n_images": int(len(y)),
                    "positives": int(y.sum()), "ensemble": choice["score"],
                    "best_member": max(singles.values()), "members": singles, "intervals": intervals,
                    "nested": nested,
                    "blends_tried": {b: c["score"] for b, c in tried.items()}},
            "selection": {"top_k": top_k, "top_runs": top_runs, "runs_kept": sorted(members),
                          "greedy": greedy, "history": choice["history"], "note": choice.get("note", "")}}
    if choice["blend"] == STACK:
        spec["stack"] = choice["stack"]
    report = {"folds": pd.concat(tables, ignore_index=True), "members": singles, "weights": choice["weights"],
              "ensemble": choice["score"], "metric": metric, "threshold": spec["threshold"], "intervals": intervals,
              "nested": nested,
              "blends_tried": spec["oof"]["blends_tried"], "note": choice.get("note", ""),
              "stack": spec.get("stack")}
    return spec, report


def outer_folds(aligned: pd.DataFrame, oofs: dict[str, pd.DataFrame]) -> np.ndarray:
    """Each aligned image's fold (the kit's folds, from the first member's OOF): the stack's outer folds."""
    first = next(iter(oofs.values()))
    return first.drop_duplicates("image_id").set_index("image_id")["fold"].reindex(aligned["image_id"]).to_numpy()


def stack_seg_table(seg_runs: list[Run], image_ids) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each seg run's stacking features of `image_ids` from its OOF, and its OOF resolution."""
    features, sizes = {}, {}
    for run in seg_runs:
        oof = selection.load_oof(run.path)
        where = pd.Series(np.arange(len(oof["image_id"])), index=oof["image_id"])
        missing = sorted(set(int(i) for i in image_ids) - set(where.index.tolist()))
        if missing:
            raise selection.RunsError(
                f"--stack-seg-runs {run.path}: its OOF lacks {len(missing)} of the classifiers' images (e.g. "
                f"{missing[:5]}); a stroke stack needs the seg runs' OOF of no-stroke slices too: train them "
                "with seg_val_negatives: true")
        rows = where.loc[list(image_ids)].to_numpy()
        per_image = seg_features(oof["probs"][rows])
        for key, column in per_image.items():
            features[f"{key}:{run.name}"] = column
        sizes[run.name] = int(oof["probs"].shape[-1])
    return features, sizes


def stack_choice(members: dict[str, np.ndarray], y: np.ndarray, folds: np.ndarray, image_ids, seg_runs: list[Run],
                 score, seed: int, spec_path, absolute: bool, kinds=("logistic", "gbm")) -> dict:
    """The `stack` blend as choose_blend returns a blend: its nested-CV OOF probabilities ("blended"), their
    score, and the spec's stack block (features, the fitted model, what the inner CV chose)."""
    features = {f"p:{name}": p for name, p in members.items()}
    seg, sizes = stack_seg_table(seg_runs, image_ids)
    features.update(seg)
    names = list(features)
    x = np.column_stack([features[n] for n in names])
    fitted = nested_stack(x, y, folds, score, candidates_of(kinds), seed=seed)
    stacked = fitted["oof"]
    block = {"features": names, "chosen": fitted["chosen"], "inner_scores": fitted["inner_scores"],
             "outer_folds": {k: v["chosen"] for k, v in fitted["per_fold"].items()},
             "nested_oof": float(score(y, stacked)), "model": fitted["model"],
             "seg_members": [member_entry(run, sorted(run.checkpoints), 1.0, spec_path, absolute,
                                          oof_size=sizes[run.name]) for run in seg_runs]}
    return {"blend": STACK, "weights": {n: 1.0 for n in members}, "score": block["nested_oof"],
            "blended": stacked, "history": [], "stack": block}


def format_report(report: dict) -> str:
    """The tables ensemble.py prints: per (member, fold), per member, the ensemble, the decision."""
    lines = [f"OOF {report['metric']} per fold ('*' = kept for inference):"]
    folds = report["folds"].copy()
    folds["chosen"] = np.where(folds["chosen"], "*", "")
    lines.append(folds.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    lines.append("")
    lines.append(f"{'member':<32} {'OOF ' + report['metric']:>14} {'weight':>8}")
    for name, value in report["members"].items():
        lines.append(f"{name:<32} {value:>14.4f} {report['weights'].get(name, 0.0):>8.3f}")
    lines.append(f"{'ENSEMBLE':<32} {report['ensemble']:>14.4f}")
    if len(report.get("blends_tried", {})) > 1:
        lines.append("blends tried: " + ", ".join(f"{b} {s:.4f}" for b, s in report["blends_tried"].items()))
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    if report.get("stack"):
        stack = report["stack"]
        lines.append(f"stack: level-2 {stack['chosen']} on {len(stack['features'])} features (inner CV), nested-CV "
                     f"OOF {stack['nested_oof']:.4f}; per outer fold: "
                     + ", ".join(f"{k}: {v}" for k, v in stack["outer_folds"].items()))
    lines += decision_lines(report)
    return "\n".join(lines)


def decision_lines(report: dict) -> list[str]:
    t = report.get("threshold")
    if not t:
        return []
    oof = t["oof"]
    if "bounds" in t and t["bounds"][0] == t["bounds"][1]:   # pinned (--threshold-range P P): nothing searched
        how = "pinned by --threshold-range"
    else:
        how = (f"{t['objective']}" + (f", recall >= {t['target_recall']}" if "target_recall" in t else "")
               + (f", searched in [{t['bounds'][0]}, {t['bounds'][1]}]" if "bounds" in t else "")
               + (f", plateau of the bootstrap {t['robust']} at "
                  + (f"{t['test_patients']} patients" if t.get("test_patients") else f"n = {t['test_size']}")
                  if "robust" in t else "")
               + f"; plateau {t['plateau'][0]:.3f}-{t['plateau'][1]:.3f}")
    return [f"threshold {t['value']:.4f} ({how}): OOF recall {oof['recall']:.4f}, "
            f"precision {oof['precision']:.4f}, specificity {oof['specificity']:.4f}, F1 {oof['f1']:.4f}, "
            f"balanced accuracy {oof['balanced_accuracy']:.4f}"
            + (f" (OOF reweighted to a test positive share of {t['test_prior']:.3f}; OOF's own "
               f"{t['oof_prior']:.3f})" if "test_prior" in t else "")] \
        + ([f"WARNING {t['bounds_note']}"] if t.get("bounds_note") else []) + interval_lines(report.get("intervals")) \
        + nested_lines(report.get("nested"))


def nested_lines(nested: dict | None) -> list[str]:
    """The nested OOF figures: each fold's images at the threshold chosen on the other folds."""
    if not nested:
        return []
    cuts = ", ".join(f"fold {k}: {v:.3f}" for k, v in nested["thresholds"].items())
    lines = [f"nested OOF (each fold's images at the threshold tuned on the other folds, {cuts}; the forecast of "
             "the test figures):"]
    for name in ("balanced_accuracy", "f1", "recall", "specificity", "precision"):
        value = nested["figures"][name]
        lines.append(f"  {name:<18} {value['estimate']:.4f}  [{value['low']:.4f}, {value['high']:.4f}]")
    return lines


def interval_lines(intervals: dict | None) -> list[str]:
    """Headline figures with their bootstrap interval at the test set's size."""
    if not intervals:
        return []
    first = next(iter(intervals.values()))
    unit = (f"{first['patients']} whole patients (of {first['n_patients']}; about {first['size']} images)"
            if first.get("patients") else f"{first['size']} images")
    lines = [f"95 % intervals on resamples of {unit} (the test set's size), {first['n_boot']} resamples:"]
    for name, value in intervals.items():
        lines.append(f"  {name:<18} {value['estimate']:.4f}  [{value['low']:.4f}, {value['high']:.4f}]")
    return lines
