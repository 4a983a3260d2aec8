"""Resampling whole patients (bootstrap.Patients, ensemble.py --test-patients): the slices of one patient are
not independent, so a test set's figure moves as its patients do, more than as many independent images would."""
import numpy as np
import pytest

from strokekit.evaluation import bootstrap
from strokekit.evaluation.bootstrap import Patients


def clustered(n_patients=40, per_patient=5, seed=0):
    """Per-image values that are one value per patient (the extreme of slices that move together)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:03d}" for i in range(n_patients)], per_patient)
    values = np.repeat(rng.uniform(0, 1, n_patients), per_patient)
    return groups, values


def test_a_resample_draws_whole_patients():
    groups, _ = clustered()
    weights = bootstrap.resample_weights(len(groups), n_boot=200, seed=1, patients=Patients(groups, 12))
    for w in weights:
        per_patient = {g: set(w[groups == g]) for g in np.unique(groups)}
        assert all(len(v) == 1 for v in per_patient.values())  # a patient's slices are drawn together
        assert sum(v.pop() for v in per_patient.values()) == 12  # 12 patients per resample
    assert Patients(groups, 12).images() == 60


def test_patient_intervals_are_as_wide_as_the_patient_count_says():
    """With slices that move together, 5 patients vary like 5 values, not like their 25 slices."""
    groups, values = clustered()
    by_image = bootstrap.interval(values, size=25, n_boot=2000, seed=0)
    by_patient = bootstrap.interval(values, n_boot=2000, seed=0, patients=Patients(groups, 5))
    one_each = bootstrap.interval(values[::5], size=5, n_boot=2000, seed=0)  # one slice per patient
    width = lambda r: r["high"] - r["low"]
    assert width(by_patient) > 1.8 * width(by_image)
    assert width(by_patient) == pytest.approx(width(one_each), rel=0.15)
    assert by_patient["patients"] == 5 and by_patient["n_patients"] == 40 and by_patient["size"] == 25
    assert "at 5 patients" in bootstrap.format_interval(by_patient)


def test_classifier_and_segmentation_figures_resample_patients():
    groups, values = clustered(per_patient=4)
    y = (values > 0.5).astype(int)
    score = np.clip(values + np.random.default_rng(2).normal(0, 0.3, len(values)), 0, 1)
    patients = Patients(groups, 8)
    by_patient = bootstrap.classifier_intervals(y, score, 0.5, n_boot=500, patients=patients)
    by_image = bootstrap.classifier_intervals(y, score, 0.5, size=32, n_boot=500)
    for name in ("recall", "balanced_accuracy", "auc"):
        assert by_patient[name]["estimate"] == pytest.approx(by_image[name]["estimate"])
        assert by_patient[name]["high"] - by_patient[name]["low"] > by_image[name]["high"] - by_image[name]["low"]
        assert by_patient[name]["patients"] == 8
    _, draws = bootstrap.threshold_curve_draws(y, score, "f1", n_boot=50, patients=patients)
    assert draws.shape[0] == 50
    # the organisers' per-image IoU of a phase-2 test set, resampled by patient
    phase2 = bootstrap.phase2_intervals(values, values, n_boot=500, patients=patients)
    assert phase2["official_iou"]["patients"] == 8
    with pytest.raises(ValueError, match="patients hold"):
        bootstrap.resample_weights(len(y) - 1, patients=patients)
