"""Segmentation post-processing chosen on OOF: exact evaluation, and a fast joint grid search as a table.

Scores are taken at the true masks' resolution (OOF probabilities are upsampled bilinearly first) under
four objectives (seg_objectives.py): strict per-class Dice / IoU (metrics.py's reductions, mean of the two
lesion classes) and the organisers' tolerant counting (official.py: score.py's DEIoU and its Dice). The
grid search gives the same numbers as `evaluate_objectives` on every setting (tests pin this) but labels
connected components once per (class, threshold, closing) and image (seg_counts.py): min-area and
keep-largest are sums over a component table, the triplet rule and the image gate per-image switches on
the counts, and phase 2's never-empty rule a per-image replacement where a setting leaves nothing.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from strokekit.errors import SettingError, UnknownNameError
from strokekit.evaluation import metrics
from strokekit.evaluation import official
from strokekit.postprocess.decide import phase2_class_map
from strokekit.config.postprocess import OVERLAP_RULES, normalise_spec
from strokekit.postprocess.steps import apply_postprocess, resize_probs
from strokekit.ensembling.seg_counts import base_settings, gather_counts
from strokekit.evaluation.ratios import combine
from strokekit.ensembling.seg_objectives import OBJECTIVES, SettingCounts, check_objective, presence
from strokekit.ensembling.selection import RunsError, plateau
from strokekit.vocabulary import LESION_NAMES

SCORES = {"iou": metrics.iou_score, "dice": metrics.dice_score}
CLASS_NAME = {cls: name for name, cls in LESION_NAMES.items()}
# axes searched per class, in the order choose_postprocess walks their plateaus
NUMERIC_AXES = ("threshold", "min_area", "closing", "gate", "triplet_high", "triplet_min_pixels")
INDEX_COLUMNS = ("_base", "_setting.ischemic", "_setting.hemorrhagic")   # where a row's counts are
GRID_KEYS = tuple(k for k in normalise_spec(None) if k != "never_empty")


def mask_getter(masks) -> Callable[[int], np.ndarray]:
    """True class maps by image id, from a Mapping {id: (H, W) uint8} or a callable id -> class map."""
    if isinstance(masks, Mapping):
        return lambda image_id: np.asarray(masks[int(image_id)])
    if callable(masks):
        return masks
    raise TypeError("masks must be a Mapping {image_id: class map} or a callable image_id -> class map")


def aligned_image_probs(image_probs, image_ids) -> np.ndarray | None:
    """Image-level probabilities as an (N, 2) array [ischemic, hemorrhagic] in the order of image_ids.

    Accepts an (N,) / (N, 2) array already in that order, or a Mapping / pandas Series by image id whose
    values are P(stroke) (used for both classes) or [p_ischemic, p_hemorrhagic].
    """
    if image_probs is None:
        return None
    if isinstance(image_probs, (Mapping, pd.Series)):
        missing = [int(i) for i in image_ids if int(i) not in image_probs]
        if missing:
            raise KeyError(f"no image-level probability for images {missing[:5]} ({len(missing)} in all)")
        values = [np.broadcast_to(np.asarray(image_probs[int(i)], float), (2,)) for i in image_ids]
        return np.stack(values)
    values = np.asarray(image_probs, dtype=float)
    values = np.repeat(values[:, None], 2, axis=1) if values.ndim == 1 else values
    if values.shape != (len(image_ids), 2):
        raise ValueError(f"image_probs must be (N,) or (N, 2) with N = {len(image_ids)}; got {values.shape}")
    return values


# --------------------------------------------------------------------------- exact evaluation


def class_maps(oof: dict, masks, spec: dict | None = None, image_probs=None, phase2: bool = False):
    """(image_id, predicted class map, true class map) of every OOF image at its true mask's size: the
    functions infer.py applies (phase2: decide.phase2_class_map, never-empty rule as the spec says)."""
    get_mask, spec = mask_getter(masks), normalise_spec(spec)
    probs_by_image = aligned_image_probs(image_probs, oof["image_id"])
    for i, image_id in enumerate(oof["image_id"]):
        true = get_mask(image_id)
        probs = resize_probs(oof["probs"][i], true.shape)
        image_prob = None if probs_by_image is None else probs_by_image[i]
        pred = (phase2_class_map(probs, spec, image_prob=image_prob)[0] if phase2
                else apply_postprocess(probs, spec, image_prob))
        yield image_id, pred, true


def evaluate_postprocess(oof: dict, masks, spec: dict | None = None, image_probs=None,
                         phase2: bool = False) -> metrics.SegStats:
    """Per-image strict counts (N, 3) of `spec` applied to every OOF image at its true mask's size."""
    stats = [metrics.seg_stats(pred, true) for _, pred, true in class_maps(oof, masks, spec, image_probs, phase2)]
    return metrics.SegStats(*(np.concatenate(parts) for parts in zip(*stats)))


def evaluate_objectives(oof: dict, masks, spec: dict | None = None, image_probs=None, phase2: bool = False,
                        reduction: str = "macro-imagewise", se_size: int = 3, region_rule: bool = True,
                        official_empty: float = 1.0) -> dict[str, float]:
    """Every objective of one setting, image by image with score.py's counting (the search's reference)."""
    strict, tolerant = [], []
    for _, pred, true in class_maps(oof, masks, spec, image_probs, phase2):
        strict.append(metrics.seg_stats(pred, true))
        tolerant.append(official.tolerant_counts(pred, true, se_size, region_rule))
    stats = metrics.SegStats(*(np.concatenate(parts) for parts in zip(*strict)))
    tp, fp, fn, tn = (np.array(column, dtype=np.int64) for column in zip(*tolerant))
    if reduction == "micro":
        tp, fp, fn, tn = (a.sum() for a in (tp, fp, fn, tn))
    per_image = official.tolerant_scores(tp, fp, fn, tn, empty=official_empty)
    return {"dice": seg_score(stats, "dice", reduction)["score"], "iou": seg_score(stats, "iou", reduction)["score"],
            "official_iou": float(metrics.nanmean(per_image["iou"], axis=0)),
            "official_dice": float(metrics.nanmean(per_image["dice"], axis=0))}


def seg_score(stats: metrics.SegStats, metric: str = "dice", reduction: str = "macro-imagewise",
              empty: float = np.nan) -> dict[str, float]:
    """{score: lesion mean, ischemic, hemorrhagic} of strict IoU or Dice under a named reduction."""
    if metric not in SCORES:
        raise UnknownNameError(f"unknown segmentation metric {metric!r}; valid: {sorted(SCORES)}")
    per_class = SCORES[metric](stats.tp, stats.fp, stats.fn, reduction=reduction, empty=empty)
    return {"score": metrics.lesion_mean(per_class),
            **{name: float(per_class[cls]) for name, cls in LESION_NAMES.items()}}


def seg_scorer(image_ids, masks, spec: dict | None = None, metric: str = "dice",
               reduction: str = "macro-imagewise") -> Callable[[np.ndarray], float]:
    """score_fn(probs (N, 3, S, S)) -> lesion-mean score, for greedy_select over segmentation members."""
    ids = np.asarray(image_ids)
    return lambda probs: seg_score(evaluate_postprocess({"image_id": ids, "probs": probs}, masks, spec),
                                   metric, reduction)["score"]


def seg_fold_scores(oof: dict, masks, spec: dict | None = None, metric: str = "dice",
                    reduction: str = "macro-imagewise") -> pd.DataFrame:
    """Score of each fold of a segmentation OOF (columns fold, n, score), for selection.top_k_folds."""
    stats = evaluate_postprocess(oof, masks, spec)
    rows = []
    for fold in np.unique(oof["fold"]):
        rows_of = oof["fold"] == fold
        part = metrics.SegStats(*(a[rows_of] for a in stats))
        rows.append({"fold": int(fold), "n": int(rows_of.sum()), "score": seg_score(part, metric, reduction)["score"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- grid search


def _candidates(value, key: str) -> dict[int, list]:
    """Per-class candidate lists: a list (searched for each class independently) or {class name: list}."""
    if isinstance(value, Mapping) and set(value) == set(LESION_NAMES):
        per_class = dict(value)
    else:
        per_class = {name: value for name in LESION_NAMES}
    out = {cls: list(per_class[name]) if isinstance(per_class[name], (list, tuple)) else [per_class[name]]
           for name, cls in LESION_NAMES.items()}
    if any(not values for values in out.values()):
        raise SettingError(f"grid {key!r} has an empty candidate list")
    return out


def normalise_grid(grid: dict) -> dict:
    """Validated grid: overlap rules, and per class the candidates of every other post-processing key.

    A list is searched for each lesion class independently (thresholds [0.3, 0.5] -> 4 pairs); give
    {ischemic: [...], hemorrhagic: [...]} for different lists. `triplet` candidates are None or
    {high, min_pixels}; `gate` candidates are None or a probability; a threshold None is argmax decoding.
    """
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise UnknownNameError(f"unknown grid key(s) {unknown}; valid keys: {sorted(GRID_KEYS)}")
    rules = grid.get("overlap", "argmax")
    rules = [rules] if isinstance(rules, str) else list(rules)
    if set(rules) - set(OVERLAP_RULES):
        raise SettingError(f"overlap rules {rules}; valid: {list(OVERLAP_RULES)}")
    out = {"overlap": rules}
    threshold = lambda v: None if v is None else float(v)          # None: argmax decoding
    for key, default, cast in (("threshold", None, threshold), ("closing", 0, int), ("min_area", 0, int),
                               ("keep_largest", False, bool)):
        try:
            out[key] = {c: [cast(v) for v in vals] for c, vals in _candidates(grid.get(key, default), key).items()}
        except (TypeError, ValueError) as err:  # a candidate that is not a number
            raise SettingError(f"grid {key!r}: every candidate must be a number ({err})") from None
    gates = _candidates(grid.get("gate", None), "gate")
    triplets = _candidates(grid.get("triplet", None), "triplet")
    out["presence"] = {c: [(g, t) for g in gates[c] for t in triplets[c]] for c in LESION_NAMES.values()}
    for options in out["presence"].values():
        for _, triplet in options:
            if triplet is not None and set(triplet) != {"high", "min_pixels"}:
                raise UnknownNameError(f"grid triplet candidates need keys ['high', 'min_pixels']; "
                                       f"got {sorted(triplet)}")
    return out


@dataclass
class Search:
    """A searched grid: the table (one row per setting, best first) and the counts behind it, so any rows
    can be rescored on any objective or bootstrap resample (`terms`) without labelling again."""
    table: pd.DataFrame
    counts: SettingCounts
    objective: str
    reduction: str
    n_images: int

    def terms(self, rows: pd.DataFrame | None = None, objective: str | None = None,
              reduction: str | None = None) -> list[tuple]:
        """Per-image (num, den) terms (N, S) of `rows` (default: the whole table)."""
        rows = self.table if rows is None else rows
        index = [rows[c].to_numpy() for c in INDEX_COLUMNS]
        return self.counts.terms(*index, objective or self.objective, reduction or self.reduction)


def run_search(oof: dict, masks, grid: dict, objective: str = "dice", reduction: str = "macro-imagewise",
               image_probs=None, never_empty: bool = False, se_size: int = 3, region_rule: bool = True,
               official_empty: float = 1.0, chunk: int | None = None) -> Search:
    """Score every post-processing setting of `grid` on segmentation OOF under all four objectives.

    oof: {image_id (N,), probs (N, 3, S, S)} as selection.load_oof gives; masks: true class maps by id
    (their size sets the resolution scored). never_empty scores phase 2's step 8 (decide.fill_region).
    Table columns: overlap, threshold/closing/min_area/keep_largest per class (`threshold.ischemic` ...),
    gate.* (0 = off) and triplet_high/min_pixels.* when searched; `score` (the objective), `score.<objective>`
    for each of OBJECTIVES, `score.ischemic` / `score.hemorrhagic` (strict, of the objective's kind).
    """
    check_objective(objective, reduction)
    axes, get_mask = normalise_grid(grid), mask_getter(masks)
    ids = np.asarray(oof["image_id"])
    probs_by_image = aligned_image_probs(image_probs, ids)
    bases = base_settings(axes)
    highs = {c: sorted({float(t["high"]) for _, t in axes["presence"][c] if t is not None}) for c in CLASS_NAME}
    grid_counts = gather_counts(oof, get_mask, axes, bases, highs, se_size, region_rule)
    present = {c: presence(axes["presence"][c], c, probs_by_image, grid_counts.high_counts[c], highs[c])
               for c in CLASS_NAME}
    counts = SettingCounts(grid_counts, present, never_empty, official_empty)
    b, a1, a2 = (i.ravel() for i in np.indices(counts.shape))
    chunk = chunk or max(256, 4_000_000 // max(len(ids), 1))          # ~100 MB of counts at a time
    scores = {name: np.empty(len(b)) for name in (*OBJECTIVES, "ischemic", "hemorrhagic")}
    for start in range(0, len(b), chunk):
        part = slice(start, start + chunk)
        for name in OBJECTIVES:
            scores[name][part] = combine(counts.terms(b[part], a1[part], a2[part], name, reduction))
        per_class = counts.per_class(b[part], a1[part], a2[part], objective, reduction)
        scores["ischemic"][part], scores["hemorrhagic"][part] = per_class
    table = _grid_table(axes, bases, (b, a1, a2), scores, objective,
                        probs_by_image is not None or any(highs.values()))
    table.attrs.update(never_empty=never_empty, objective=objective, reduction=reduction)
    return Search(table, counts, objective, reduction, len(ids))


def search_postprocess(oof: dict, masks, grid: dict, metric: str = "dice", reduction: str = "macro-imagewise",
                       image_probs=None, never_empty: bool = False, **options) -> pd.DataFrame:
    """The table of `run_search` (metric = the objective: dice, iou, official_iou, official_dice)."""
    return run_search(oof, masks, grid, metric, reduction, image_probs, never_empty, **options).table


def _class_settings(axes: dict, cls: int) -> list[dict]:
    """Column values of each (min_area, keep_largest, presence) combination of one class, in score order."""
    name, rows = CLASS_NAME[cls], []
    for m, k, (gate, triplet) in itertools.product(axes["min_area"][cls], axes["keep_largest"][cls],
                                                   axes["presence"][cls]):
        rows.append({f"min_area.{name}": m, f"keep_largest.{name}": k,
                     f"gate.{name}": 0.0 if gate is None else float(gate),
                     f"triplet_high.{name}": np.nan if triplet is None else float(triplet["high"]),
                     f"triplet_min_pixels.{name}": 0 if triplet is None else int(triplet["min_pixels"])})
    return rows


def _grid_table(axes: dict, bases: list, index: tuple, scores: dict, objective: str,
                presence_searched: bool) -> pd.DataFrame:
    b, a1, a2 = index
    base = pd.DataFrame(bases, columns=["overlap", "threshold.ischemic", "closing.ischemic",
                                        "threshold.hemorrhagic", "closing.hemorrhagic"])
    base = base.astype({"threshold.ischemic": float, "threshold.hemorrhagic": float}).iloc[b]   # NaN = argmax
    first = pd.DataFrame(_class_settings(axes, 1)).iloc[a1]
    second = pd.DataFrame(_class_settings(axes, 2)).iloc[a2]
    table = pd.concat([frame.reset_index(drop=True) for frame in (base, first, second)], axis=1)
    if not presence_searched:
        table = table.drop(columns=[c for c in table.columns if c.startswith(("gate.", "triplet_"))])
    table["score"] = scores[objective]
    for name in ("ischemic", "hemorrhagic", *OBJECTIVES):
        table[f"score.{name}"] = scores[name]
    for column, values in zip(INDEX_COLUMNS, index):
        table[column] = values
    return table.sort_values("score", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def row_to_spec(row: Mapping, never_empty: bool = False) -> dict:
    """The post-processing spec (postprocess.normalise_spec form) of one row of the search table
    (never_empty: whether the search scored phase 2's step 8; a table says so in `table.attrs`)."""
    per = lambda key, cast: {name: cast(row[f"{key}.{name}"]) for name in LESION_NAMES}
    threshold = lambda v: None if pd.isna(v) else float(v)
    spec = {"overlap": row["overlap"], "threshold": per("threshold", threshold), "closing": per("closing", int),
            "min_area": per("min_area", int), "keep_largest": per("keep_largest", bool),
            "never_empty": bool(never_empty)}
    if any(f"gate.{name}" in row and row[f"gate.{name}"] > 0 for name in LESION_NAMES):
        spec["gate"] = per("gate", float)
    if any(f"triplet_min_pixels.{name}" in row and row[f"triplet_min_pixels.{name}"] > 0 for name in LESION_NAMES):
        high = {n: 1.0 if pd.isna(row[f"triplet_high.{n}"]) else float(row[f"triplet_high.{n}"]) for n in LESION_NAMES}
        spec["triplet"] = {"high": high, "min_pixels": per("triplet_min_pixels", int)}
    return normalise_spec(spec)


def _matches(table: pd.DataFrame, chosen: dict, skip: str | None = None) -> pd.Series:
    """Rows equal to `chosen` on every setting column but `skip` (NaN equals NaN)."""
    ok = pd.Series(True, index=table.index)
    for col, value in chosen.items():
        if col != skip:
            ok &= (table[col] == value) | (table[col].isna() & pd.isna(value))
    return ok


def setting_columns(table: pd.DataFrame) -> list[str]:
    """The columns that name a setting (not scores, not the counts' index)."""
    return [c for c in table.columns if not c.startswith(("score", "_"))]


def choose_postprocess(table: pd.DataFrame, tolerance: float = 0.005, score: str = "score") -> dict:
    """The setting to submit: start at the row best by `score`, then move each numeric axis in turn to the
    middle of its near-best plateau (others held), as PITFALLS.md asks. Returns spec, scores, per-axis
    stability and the chosen table row. `score` may name another column (e.g. a bootstrap quantile)."""
    settings = setting_columns(table)
    ranked = table[np.isfinite(table[score])]
    if ranked.empty:
        raise RunsError(f"no setting has a finite {score!r}: no lesion in the OOF images?")
    best = ranked.loc[ranked[score].idxmax()]
    chosen = {c: best[c] for c in settings}
    stability = {}
    for axis in NUMERIC_AXES:
        for name in LESION_NAMES:
            col = f"{axis}.{name}"
            if col not in ranked or ranked[col].nunique() < 2 or pd.isna(chosen[col]):
                continue                                 # NaN: argmax decoding / triplet off, not an axis
            line = ranked[_matches(ranked, chosen, skip=col) & ranked[col].notna()]
            if line[col].nunique() < 2:
                continue
            flat = plateau(line[col], line[score], tolerance)
            chosen[col] = type(chosen[col])(flat["value"])
            stability[col] = {k: flat[k] for k in ("value", "best_value", "plateau", "width")}
    row = ranked[_matches(ranked, chosen)].iloc[0]
    return {"spec": row_to_spec(row, table.attrs.get("never_empty", False)), "score": float(row[score]),
            "best_score": float(best[score]), "scores": {name: float(row[f"score.{name}"]) for name in LESION_NAMES},
            "objectives": {name: float(row[f"score.{name}"]) for name in OBJECTIVES if f"score.{name}" in row},
            "stability": stability, "tolerance": tolerance, "row": row}
