"""An ensemble's members against its blend, on the OOF images all members predicted: each member's own OOF
figure, its weight, whether `ensemble.py --top-runs K` kept it (the spec's selection.runs_kept), and what it
adds: the blend's OOF figure without it minus the blend's (leave-one-out; negative = the member helps).

Every figure of the table is computed here with one rule, so the rows compare: classifiers the spec's OOF
metric (selection.classifier_score) of the blended probabilities; segmenters strict per-image Dice, mean of
the lesion classes, on lesion slices, argmax of the blended probabilities (no post-processing, so the members'
own maps and the blend's are decided alike). Runs the spec lists in oof.members but did not keep (top-runs)
show their figure from the spec, without a weight or leave-one-out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from strokekit.ensembling import selection
from strokekit.ensembling.spec import combine
from strokekit.report.evaluate import Source, seg_records

BLEND = "BLEND"


def classifier_members(source: Source) -> tuple[pd.DataFrame, str]:
    """(table, metric) for a classifier spec: one row per run and one for the blend."""
    spec = source.spec
    metric, options = spec["oof"].get("metric", "auc"), spec["oof"].get("metric_options") or {}
    members = {m["name"]: selection.load_oof(run) for m, run in zip(spec["members"], source.runs)}
    aligned = selection.align_members(members)
    y = aligned["target"].to_numpy()
    names = list(members)
    probs = np.stack([aligned[n].to_numpy(dtype=np.float64) for n in names])
    weights = np.array([m["weight"] for m in spec["members"]], dtype=float)
    thresholds = [m.get("threshold", 0.5) for m in spec["members"]]

    def score(keep: np.ndarray) -> float:
        blended = combine(probs[keep], spec["blend"], weights[keep], [t for t, k in zip(thresholds, keep) if k])
        return selection.classifier_score(y, blended, metric, **options)

    alone = {n: selection.classifier_score(y, probs[i], metric, **options) for i, n in enumerate(names)}
    return _table(source, names, weights, alone, score), metric


def seg_members(source: Source, masks: dict, negatives: set[int]) -> tuple[pd.DataFrame, str]:
    """(table, metric) for a seg spec, as classifier_members (strict Dice, argmax, lesion slices)."""
    from strokekit.ensembling.segmenters import aligned_seg_oof

    spec = source.spec
    raw = {m["name"]: selection.load_oof(run) for m, run in zip(spec["members"], source.runs)}
    ids, aligned = aligned_seg_oof(raw)
    names = list(aligned)
    lesion = np.array([int(i) not in negatives and bool(masks[int(i)].any()) for i in ids])
    probs = np.stack([aligned[n]["probs"][lesion] for n in names])
    weights = np.array([m["weight"] for m in spec["members"]], dtype=float)
    base = {"image_id": np.asarray(ids)[lesion], "fold": aligned[names[0]]["fold"][lesion]}

    def dice(blended: np.ndarray) -> float:
        records = seg_records({**base, "probs": blended}, masks, None, set())
        return float(records["dice_lesion_mean"].mean())

    def score(keep: np.ndarray) -> float:
        return dice(combine(probs[keep], spec["blend"], weights[keep]))

    alone = {n: dice(probs[i]) for i, n in enumerate(names)}
    return _table(source, names, weights, alone, score), "dice (strict, per image, lesion mean; argmax)"


def _table(source: Source, names: list[str], weights: np.ndarray, alone: dict, score) -> pd.DataFrame:
    spec = source.spec
    everyone = np.ones(len(names), bool)
    blend = score(everyone)
    used = weights > 0
    kept = set((spec.get("selection") or {}).get("runs_kept") or names)
    rows = []
    for i, name in enumerate(names):
        keep = everyone.copy()
        keep[i] = False
        loo = score(keep) if used[i] and (used & keep).sum() >= 1 else np.nan
        rows.append({"member": name, "kept": "yes" if name in kept else "no", "weight": float(weights[i]),
                     "oof": alone[name], "blend without it": loo, "loo_delta": loo - blend})
    spec_members = spec["oof"].get("members")
    if isinstance(spec_members, dict):  # runs scored but left out (--top-runs), figure as the spec recorded it
        for name, value in spec_members.items():
            if name not in names:
                rows.append({"member": name, "kept": "yes" if name in kept else "no (top-runs)", "weight": 0.0,
                             "oof": float(value), "blend without it": np.nan, "loo_delta": np.nan})
    rows.append({"member": BLEND, "kept": "", "weight": np.nan, "oof": blend,
                 "blend without it": np.nan, "loo_delta": np.nan})
    return pd.DataFrame(rows)


def chart_rows(table: pd.DataFrame) -> list[dict]:
    """The table as figures.members_and_blend rows."""
    return [{"name": "blend" if r["member"] == BLEND else r["member"], "oof": float(r["oof"]),
             "weight": float(r["weight"]) if r["member"] != BLEND else None, "blend": r["member"] == BLEND,
             "loo_delta": float(r["loo_delta"])} for _, r in table.iterrows()]
