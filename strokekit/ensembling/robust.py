"""Post-processing settings chosen to survive a test set's size: each searched setting scored on bootstrap
resamples of the OOF images (at the test set's size), then the plateau of a robust statistic (p10, median)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from strokekit.ensembling.seg_search import choose_postprocess
from strokekit.evaluation.bootstrap import (PHASE_TEST_SIZES, Patients, resample_facts, resample_weights, robust_scores,
                                           summarise)
from strokekit.evaluation.ratios import combine


def setting_distribution(search, rows: pd.DataFrame, size: int | None = None, n_boot: int = 1000,
                         seed: int = 0, objective: str | None = None, chunk: int = 2048,
                         patients: Patients | None = None) -> np.ndarray:
    """(n_boot, len(rows)) the objective of each searched setting on each resample of `size` images (or of
    whole patients: `patients`, aligned to the searched images)."""
    weights = resample_weights(search.n_images, size, n_boot, seed, patients=patients).astype(np.float32)
    out = np.empty((n_boot, len(rows)))
    for start in range(0, len(rows), chunk):
        part = rows.iloc[start:start + chunk]
        terms = [(num.astype(np.float32), den.astype(np.float32)) for num, den in search.terms(part, objective)]
        out[:, start:start + len(part)] = combine(terms, weights)
    return out


def robust_choice(search, statistic: str = "p10", size: int | None = PHASE_TEST_SIZES[2], n_boot: int = 1000,
                  tolerance: float = 0.005, max_rows: int = 20000, seed: int = 0, level: float = 0.95,
                  patients: Patients | None = None) -> dict:
    """A post-processing setting chosen by a bootstrap statistic at a test set's size, from its plateau.

    The `max_rows` best settings by the point score are resampled (all, for grids up to that size);
    table column `score.robust` holds the statistic (NaN where not resampled). Returns choose_postprocess's
    dict plus `interval` (the chosen setting's point score and percentile interval at `size`),
    `statistic`, `size`, `n_boot` and `point_choice` (the plain plateau choice, for comparison). With
    `patients` (aligned to the searched images) each resample draws whole patients.
    """
    table = search.table
    rows = table.head(max_rows)
    draws = setting_distribution(search, rows, size, n_boot, seed, patients=patients)
    table["score.robust"] = np.nan
    table.loc[rows.index, "score.robust"] = robust_scores(draws, statistic)
    chosen = choose_postprocess(table, tolerance, score="score.robust")
    position = rows.index.get_loc(chosen["row"].name)
    chosen["score"] = float(chosen["row"]["score"])
    chosen["robust_score"] = float(chosen["row"]["score.robust"])
    facts = resample_facts(search.n_images, size, n_boot, patients)
    chosen["interval"] = summarise(draws[:, position], chosen["score"], level) | facts
    chosen.update(statistic=statistic, size=facts["size"], n_boot=n_boot, patients=facts.get("patients"),
                  point_choice=choose_postprocess(table.drop(columns="score.robust"), tolerance)["spec"])
    return chosen


def chosen_interval(search, row: pd.Series, size: int | None, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, objective: str | None = None, patients: Patients | None = None) -> dict:
    """Point score and percentile interval of one table row's setting on resamples of `size` images (or of
    whole patients)."""
    draws = setting_distribution(search, search.table.loc[[row.name]], size, n_boot, seed, objective,
                                 patients=patients)[:, 0]
    estimate = float(row[f"score.{objective}"] if objective else row["score"])
    return summarise(draws, estimate, level) | resample_facts(search.n_images, size, n_boot, patients)
