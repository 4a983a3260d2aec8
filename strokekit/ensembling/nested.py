"""A nested OOF estimate of tuned post-processing: each fold's images scored with the setting chosen on the
other folds' images only.

The spec's OOF figure is scored on the images its setting was chosen on; over thousands of settings that is
optimistic (the best of many noisy figures), so it over-states the submission. Nested, the choice for fold k
never sees fold k: the pooled figure is what the tuning procedure itself earns on images it did not tune on,
the honest forecast of the test figure. The search's per-image terms (seg_search.Search.terms) make this
cheap: no image is scored again, a choice on a subset is a weight vector over the images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from strokekit.ensembling.robust import robust_choice
from strokekit.ensembling.seg_search import INDEX_COLUMNS, choose_postprocess
from strokekit.evaluation.bootstrap import Patients, resample_facts, resample_weights, summarise
from strokekit.evaluation.ratios import combine


class SubsetSearch:
    """A Search seen through some of its images: its table's `score` rescored on them (best first, ties in the
    grid's order, as run_search sorts), its terms cut to them. The other score.* columns stay the full set's."""

    def __init__(self, search, keep: np.ndarray, chunk: int = 2048):
        self.base, self.keep = search, np.asarray(keep, bool)
        self.objective, self.reduction, self.n_images = search.objective, search.reduction, int(self.keep.sum())
        table = search.table.copy()
        score = np.empty(len(table))
        for start in range(0, len(table), chunk):
            part = table.iloc[start:start + chunk]
            score[start:start + len(part)] = combine(self.terms(part))
        table["score"] = score
        self.table = table.sort_values(list(INDEX_COLUMNS)).sort_values(
            "score", ascending=False, na_position="last", kind="stable")
        self.table.attrs.update(search.table.attrs)

    def terms(self, rows: pd.DataFrame | None = None, objective: str | None = None,
              reduction: str | None = None) -> list[tuple]:
        return [(num[self.keep], den[self.keep]) for num, den in self.base.terms(rows, objective, reduction)]


def nested_estimate(search, folds: np.ndarray, robust: str | None, size: int, n_boot: int = 1000,
                    tolerance: float = 0.005, seed: int = 0, level: float = 0.95,
                    patients: Patients | None = None, objectives=()) -> dict:
    """The objective of the tuned post-processing, each image scored with the setting chosen (as the spec's:
    the `robust` statistic's plateau at `size`, or the point plateau) without its fold. folds: (N,) each
    searched image's fold. Returns {estimate, low, high, ...} (the interval resamples images, or patients),
    `settings`: the setting each fold's images got, as post-processing specs, and under `objectives` the
    same nested figure of each other objective named (the chosen settings scored another way)."""
    folds = np.asarray(folds)
    if len(folds) != search.n_images:
        raise ValueError(f"{len(folds)} folds for {search.n_images} searched images")
    if len(np.unique(folds)) < 2:
        raise ValueError("a nested estimate needs at least two folds among the searched images")
    rows, settings = {}, {}
    for fold in np.unique(folds):
        inner = SubsetSearch(search, folds != fold)
        choice = (robust_choice(inner, robust, size, n_boot, tolerance, seed=seed) if robust
                  else choose_postprocess(inner.table, tolerance))
        settings[int(fold)], rows[int(fold)] = choice["spec"], choice["row"].name
    weights = resample_weights(search.n_images, size, n_boot, seed, patients=patients)
    facts = resample_facts(search.n_images, size, n_boot, patients)

    def pooled(objective: str | None) -> dict:
        """Each image's terms from its fold's chosen setting, combined: the estimate and its interval."""
        chosen_terms = None
        for fold, row in rows.items():
            terms, mine = search.terms(search.table.loc[[row]], objective), folds == fold
            if chosen_terms is None:
                chosen_terms = [(np.zeros_like(num), np.zeros_like(den)) for num, den in terms]
            for (num, den), (out_num, out_den) in zip(terms, chosen_terms):
                out_num[mine], out_den[mine] = num[mine], den[mine]
        return summarise(combine(chosen_terms, weights)[:, 0], float(combine(chosen_terms)[0]), level) | facts

    return pooled(None) | {"settings": settings, "folds": len(settings),
                           "objectives": {name: pooled(name) for name in objectives}}


def nested_threshold_figures(y_true, y_score, folds: np.ndarray, tune, size: int | None, n_boot: int = 1000,
                             seed: int = 0, level: float = 0.95, test_prior: float | None = None,
                             patients: Patients | None = None) -> dict:
    """A classifier's headline figures at thresholds chosen without the images they decide: fold k's images
    cut at `tune(y, score)`'s threshold on the other folds (tune: selection.tune_classifier_threshold with the
    spec's options; it gets the boolean mask of the images it may tune on). Returns the figures with their
    intervals (classifier_intervals of the 0/1 decisions) and `thresholds`: each fold's."""
    from strokekit.evaluation.bootstrap import classifier_intervals

    y, p, folds = np.asarray(y_true).astype(int), np.asarray(y_score, float), np.asarray(folds)
    if len(np.unique(folds)) < 2:
        raise ValueError("a nested estimate needs at least two folds")
    decided, thresholds = np.zeros(len(y), int), {}
    for fold in np.unique(folds):
        mine = folds == fold
        thresholds[int(fold)] = float(tune(~mine))
        decided[mine] = (p[mine] >= thresholds[int(fold)]).astype(int)
    figures = classifier_intervals(y, decided, 0.5, size, n_boot, seed, level, test_prior=test_prior,
                                   with_auc=False, patients=patients)
    return {"figures": figures, "thresholds": thresholds}
