"""What the report's figures promise, read from the matplotlib objects (quick: no training): one curve and no
"fold 0" on a test set, a one-point threshold plateau drawn as a line not a band, heatmap numbers in a colour
that reads on their cell, nnU-Net-style curves with labelled axes and the best epoch marked, the lesion crop
of the galleries holding the lesion, the display colour of ischemia brighter than the official blue, and
leaderboard labels that fit."""
import numpy as np
import pandas as pd

from strokekit.data.encodings import MASK_COLOURS
from strokekit.report import figures, galleries


def labels(ax):
    return ax.get_legend_handles_labels()[1]


def test_roc_on_a_test_set_has_no_fold_legend():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    fig = figures.roc_pr(y, p, label="test set")
    roc = fig.axes[0]
    assert [label.split(" AUC")[0] for label in labels(roc)] == ["test set"]
    fig = figures.roc_pr(y, p, np.array([0, 0, 0, 1, 1, 1]))  # OOF with two folds: each fold and pooled
    assert [label.split(" AUC")[0] for label in labels(fig.axes[0])] == ["fold 0", "fold 1", "pooled"]


def test_plateau_of_one_point_is_not_a_band():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    p = np.linspace(0.1, 0.9, 8)
    fig = figures.threshold_curve(y, p, float(p[3]), (float(p[3]), float(p[3])))
    ax = fig.axes[0]
    assert not ax.patches  # no axvspan
    assert any("1 point only" in label for label in labels(ax))
    fig = figures.threshold_curve(y, p, float(p[3]), (float(p[2]), float(p[6])))
    assert len(fig.axes[0].patches) == 1 and any("5 OOF scores" in label for label in labels(fig.axes[0]))


def test_heatmap_numbers_read_on_every_cell():
    assert figures.text_colour((1.0, 1.0, 0.2, 1)) == "black"  # viridis' yellow
    assert figures.text_colour((0.27, 0.0, 0.33, 1)) == "white"  # viridis' purple
    table = pd.DataFrame([{"threshold.ischemic": t, "min_area.ischemic": m, "threshold.hemorrhagic": t,
                           "min_area.hemorrhagic": m, "score": s}
                          for (t, m), s in zip([(None, 0), (None, 16), (0.5, 0), (0.5, 16)], [0.1, 0.2, 0.3, 0.9])])
    fig = figures.seg_surfaces(table)
    colours = {text.get_text(): text.get_color() for text in fig.axes[0].texts}
    assert colours["0.100"] == "white" and colours["0.900"] == "black"
    fig = figures.confusion(np.array([[120, 3], [1, 60]]), ["no", "yes"])
    texts = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert texts == {"120": "white", "3": "black", "1": "black", "60": "black"} or texts["120"] != texts["3"]


def test_curves_in_progress_style():
    rows = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 1 / e, "val_loss": 1.1 / e, "auc": a, "time_s": 2.0}
            for e, a in zip(range(1, 7), [0.5, 0.7, 0.9, 0.6, 0.8, 0.85])]
    fig = figures.training_curves({"fold0": rows}, "auc")
    assert all(ax.get_ylabel() for ax in fig.axes)
    assert [ax.get_title() for ax in fig.axes][2:] == ["learning rate", "epoch time"]
    assert any("best: epoch 3, 0.900" in t.get_text() for t in fig.legends[0].get_texts())
    assert np.allclose(figures.moving_average(np.array([1.0, 3.0, np.nan, 5.0]), 2), [1, 2, 3, 5])


def test_gallery_crop_holds_the_lesion_and_ischemia_shows():
    truth = np.zeros((128, 128), np.uint8)
    truth[40:46, 90:97] = 1
    pred = np.zeros_like(truth)
    pred[44:50, 95:99] = 2
    y0, y1, x0, x1 = galleries.crop_box(truth, pred, shape=truth.shape)
    assert y0 <= 40 and y1 >= 50 and x0 <= 90 and x1 >= 99
    assert (y1 - y0) < 128 and (y1 - y0) >= 0.25 * 128
    assert galleries.crop_box(np.zeros_like(truth), shape=truth.shape) == (0, 128, 0, 128)
    outcome = galleries.strict_outcomes(pred, truth)
    assert (outcome == 3).sum() == (truth > 0).sum()  # every true pixel given the wrong class: FN
    assert (outcome == 2).sum() == ((pred > 0) & (truth == 0)).sum() and not (outcome == 1).any()
    luminance = lambda c: 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    assert luminance(galleries.DISPLAY_COLOURS[1]) > 3 * luminance(MASK_COLOURS[1])
    grey = np.full(truth.shape, 100, np.uint8)
    fig = galleries.seg_gallery([{"grey": grey, "truth": truth, "pred": pred, "caption": "image 1\nDice 0.00"}])
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()][:2] == ["ischemic", "hemorrhagic"]


def test_leaderboard_labels_fit():
    long = "a_config_name_far_too_long_for_the_axis_s1_lr3e-4"
    fig = figures.leaderboard_bars({"stroke": [(long, 0.8, [0.78, 0.82], "tab:blue")]}, {"stroke": "auc"})
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert shown[0].endswith("…") and len(shown[0]) <= 28
    assert ax.get_xlabel() == "OOF auc"
