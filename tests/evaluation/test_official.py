"""The official tolerant counting against the organisers' workbook, hand-counted grids and a slow reference."""
from __future__ import annotations

import time
from collections import deque

import numpy as np
import openpyxl
import pytest

from strokekit.evaluation.official import (FN, FP, TN, TP, misclassified_regions, official_scores, outcome_map,
                                           tolerance_bands, tolerant_counts, tolerant_scores)

WORKBOOK = "teknofest_official_docs/docs/Bilgi Notu.xlsx"
SHEET = "Aşama2 Değerlendirme"
I, H = 1, 2  # ischemic, hemorrhagic


# --------------------------------------------------------------------------- reading the workbook
# Each 8x8 grid is a block of cells holding the pixel numbers 0..63; the class or outcome of a pixel is
# the cell's fill colour, whose meaning the sheet's legends give. Counts sit two cells right of their label.


def _fill(cell):
    fill = cell.fill
    if fill is None or fill.fill_type is None:
        return None
    fg = fill.fgColor
    return (fg.type, fg.rgb if fg.type == "rgb" else fg.theme, round(float(fg.tint or 0), 4))


def _find(ws, text: str, min_row: int = 1, max_row: int | None = None):
    for row in ws.iter_rows(min_row=min_row, max_row=max_row or ws.max_row):
        for cell in row:
            if isinstance(cell.value, str) and cell.value.strip() == text:
                return cell
    raise AssertionError(f"workbook has no cell {text!r}")


def _grid(ws, title) -> list[list]:
    """Fill keys of the 8x8 grid below a title cell, checking the cells number the pixels 0..63."""
    rows = []
    for r in range(8):
        cells = [ws.cell(title.row + 1 + r, title.column + c) for c in range(8)]
        assert [c.value for c in cells] == list(range(8 * r, 8 * r + 8)), f"grid under {title.value!r}"
        rows.append([_fill(c) for c in cells])
    return rows


def _decode(grid, legend: dict) -> np.ndarray:
    unknown = {key for row in grid for key in row} - set(legend)
    assert not unknown, f"fill colours without a legend entry: {unknown}"
    return np.array([[legend[key] for key in row] for row in grid], dtype=np.uint8)


@pytest.fixture(scope="module")
def workbook(real_samples):
    ws = openpyxl.load_workbook(real_samples / WORKBOOK)[SHEET]
    gt1_title = _find(ws, "Doğru Maske (GT1)")
    legend_row = gt1_title.row + 9
    hem = _fill(ws.cell(legend_row, _find(ws, "Kanama", legend_row, legend_row).column - 1))
    isc = _fill(ws.cell(legend_row, _find(ws, "İskemi", legend_row, legend_row).column - 1))
    either = _fill(ws.cell(legend_row, _find(ws, "Kanama veya İskemi", legend_row, legend_row).column - 1))
    classes = {None: 0, isc: I, hem: H}
    outcome_legend = {None: TN}
    for label, code in (("True Positive", TP), ("False Positive", FP), ("False Negative", FN)):
        cell = _find(ws, label)
        outcome_legend[_fill(ws.cell(cell.row, cell.column - 1))] = code
    book = {
        "gt1": _decode(_grid(ws, gt1_title), classes),
        "gt2": _decode(_grid(ws, _find(ws, "Doğru Maske Dilation işleminden Sonra (GT2)")),
                       {None: 0, isc: I, hem: H, either: 3}),
        "gt3": _decode(_grid(ws, _find(ws, "Doğru Maske Erosion işleminden Sonra (GT3)")), classes),
        "examples": {},
    }
    for k in range(1, 6):
        title = _find(ws, f"Örnek Sonuç {k}")
        counts = {}
        for label, key in (("True Positive", "tp"), ("False Positive", "fp"), ("False Negative", "fn")):
            cell = _find(ws, label, title.row, title.row + 5)
            counts[key] = ws.cell(cell.row, cell.column + 2).value
        book["examples"][k] = {
            "result": _decode(_grid(ws, title), classes),
            "outcomes": _decode(_grid(ws, _find(ws, f"Örnek Sonuç {k} Değerlendirme")), outcome_legend),
            "counts": counts,
        }
    return book


def _gt2_code(true: np.ndarray) -> np.ndarray:
    gt2 = tolerance_bands(true).gt2
    return np.select([gt2[I] & gt2[H], gt2[I], gt2[H]], [3, I, H], 0)


# --------------------------------------------------------------------------- the workbook's examples


def test_workbook_ground_truth_is_the_documented_layout(workbook):
    gt1 = np.zeros((8, 8), np.uint8)
    gt1[1:4, 1:4], gt1[4:7, 4:7] = H, I
    np.testing.assert_array_equal(workbook["gt1"], gt1)


def test_dilation_and_erosion_reproduce_workbook_gt2_gt3(workbook):
    np.testing.assert_array_equal(_gt2_code(workbook["gt1"]), workbook["gt2"])
    np.testing.assert_array_equal(tolerance_bands(workbook["gt1"]).gt3, workbook["gt3"])
    # the overlap zone is the four pixels the sheet names: 27, 28, 35 and 36
    assert sorted(np.flatnonzero(workbook["gt2"] == 3).tolist()) == [27, 28, 35, 36]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_workbook_example_pixel_by_pixel_and_counts(workbook, k):
    example = workbook["examples"][k]
    outcomes = outcome_map(example["result"], workbook["gt1"])
    np.testing.assert_array_equal(outcomes, example["outcomes"])
    counts = tolerant_counts(example["result"], workbook["gt1"])
    assert {"tp": counts.tp, "fp": counts.fp, "fn": counts.fn} == example["counts"]
    assert counts.tn == 64 - counts.tp - counts.fp - counts.fn  # the sheet's TN formula


def test_workbook_example_4_erratum(workbook):
    """Example 4 contradicts itself; pin exactly how, so a corrected workbook makes this test fail.

    Its result is drawn in the ischemia colour, but the note calls the region "correctly classified" and the
    evaluation grid marks the 16 pixels over the hemorrhage as TP; its TP cell says 12 (grid: 16 TP cells).
    Read as hemorrhage, our counting reproduces the evaluation grid pixel for pixel (TP 16, FP 4, FN 1).
    """
    example = workbook["examples"][4]
    drawn = example["result"]
    assert set(np.unique(drawn).tolist()) == {0, I}
    assert example["counts"] == {"tp": 12, "fp": 4, "fn": 1}
    assert int((example["outcomes"] == TP).sum()) == 16
    as_hemorrhage = np.where(drawn > 0, H, 0)
    np.testing.assert_array_equal(outcome_map(as_hemorrhage, workbook["gt1"]), example["outcomes"])
    assert tolerant_counts(as_hemorrhage, workbook["gt1"])[:3] == (16, 4, 1)
    # as drawn (ischemic over the hemorrhage) the rules give something else entirely
    assert tolerant_counts(drawn, workbook["gt1"])[:3] == (6, 13, 2)


def test_workbook_example_2_needs_the_region_rule(workbook):
    """With the pure pixel rule, the wrong-class region's pixels in the overlap zone and GT2-ischemia are TP."""
    example = workbook["examples"][2]
    pixel = tolerant_counts(example["result"], workbook["gt1"], region_rule=False)
    assert pixel[:3] == (3, 17, 2)
    assert pixel[:3] != tuple(example["counts"].values())


# --------------------------------------------------------------------------- hand-counted grids


def _truth_8x8() -> np.ndarray:
    gt = np.zeros((8, 8), np.uint8)
    gt[1:4, 1:4], gt[4:7, 4:7] = H, I
    return gt


def test_perfect_answer_has_no_fp_or_fn():
    gt = _truth_8x8()
    counts = tolerant_counts(gt, gt)
    assert counts == (18, 0, 0, 46)
    assert official_scores(gt, gt)["iou"] == 1.0


def test_region_outside_gt2_is_all_fp():
    gt = np.zeros((10, 10), np.uint8)
    gt[1:4, 1:4] = H
    pred = gt.copy()
    pred[7:9, 6:9] = H  # 6 pixels, 3+ pixels away from the lesion
    assert tolerant_counts(pred, gt) == (9, 6, 0, 85)


def test_wrong_class_region_is_fp_and_its_gt3_pixels_fn():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:7, 2:7] = H  # 5x5 lesion: GT3 is the 3x3 core
    pred = np.zeros_like(gt)
    pred[2:5, 2:7] = I  # top 3 rows, wrong class: covers core rows 3-4 -> 6 FN, 15 - 6 = 9 FP
    tp, fp, fn, tn = tolerant_counts(pred, gt)
    # FN: 6 core pixels under the wrong class + 3 core pixels of row 5 left at background
    assert (tp, fp, fn) == (0, 9, 9)
    assert tn == 100 - 9 - 9


def test_overlap_zone_accepts_either_class_for_regions_touching_their_class():
    gt = _truth_8x8()  # overlap zone: (3,3), (3,4), (4,3), (4,4)
    pred = gt.copy()
    pred[3, 3] = I  # true hemorrhage pixel answered ischemic, joined (diagonally) to the ischemia region
    assert outcome_map(pred, gt)[3, 3] == TP
    assert tolerant_counts(pred, gt) == (18, 0, 0, 46)


def test_overlap_zone_region_rule_versus_pixel_rule():
    gt = _truth_8x8()
    lone = np.zeros_like(gt)
    lone[4, 3] = H  # in the overlap zone but on no true hemorrhage pixel, and cut off from it
    assert outcome_map(lone, gt)[4, 3] == FP
    assert outcome_map(lone, gt, region_rule=False)[4, 3] == TP
    joined = np.where(gt == H, H, 0).astype(np.uint8)
    joined[4, 3] = H  # the same pixel as part of the true hemorrhage's region
    assert outcome_map(joined, gt)[4, 3] == TP


def test_region_merely_bordering_its_class_is_still_misclassified():
    gt = _truth_8x8()
    pred = np.zeros_like(gt)
    pred[3, 5:8] = I  # GT2 of ischemia, 4-adjacent to true ischemia row 4, but shares no pixel with it
    assert outcome_map(pred, gt, region_rule=False)[3, 5:8].tolist() == [TP] * 3
    assert outcome_map(pred, gt)[3, 5:8].tolist() == [FP] * 3


def test_thin_prediction_inside_lesion_core_is_not_penalised():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:5, 2:5] = H  # GT3 is the single centre pixel (3,3)
    pred = np.zeros_like(gt)
    pred[3, 2:5] = H  # one row through the centre
    assert tolerant_counts(pred, gt) == (3, 0, 0, 97)
    gt[2:6, 2:6] = H  # 4x4 lesion: GT3 is the 2x2 core
    pred = np.zeros_like(gt)
    pred[3:5, 3:5] = H
    assert tolerant_counts(pred, gt) == (4, 0, 0, 96)


def test_missed_core_pixels_are_the_only_fn():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:7, 2:7] = I
    assert tolerant_counts(np.zeros_like(gt), gt) == (0, 0, 9, 91)


def test_larger_structuring_element_widens_both_bands():
    gt = np.zeros((15, 15), np.uint8)
    gt[5:10, 5:10] = H
    pred = gt.copy()
    pred[5:10, 10:12] = H  # two columns beyond the lesion edge
    assert tolerant_counts(pred, gt, se_size=3) == (30, 5, 0, 190)
    assert tolerant_counts(pred, gt, se_size=5) == (35, 0, 0, 190)
    assert int((tolerance_bands(gt, se_size=5).gt3 > 0).sum()) == 1
    with pytest.raises(ValueError, match="odd"):
        tolerance_bands(gt, se_size=4)


def test_lesion_on_the_image_edge_is_not_eroded_from_outside():
    gt = np.zeros((6, 6), np.uint8)
    gt[0:3, 0:3] = I
    gt3 = tolerance_bands(gt).gt3
    assert gt3[0:2, 0:2].tolist() == [[I, I], [I, I]] and int((gt3 > 0).sum()) == 4


def test_empty_image_scores_by_the_empty_rule():
    empty = np.zeros((5, 5), np.uint8)
    assert tolerant_counts(empty, empty) == (0, 0, 0, 25)
    assert official_scores(empty, empty)["iou"] == 1.0
    assert np.isnan(official_scores(empty, empty, empty=np.nan)["dice"])
    # an empty answer to a real lesion: precision has no denominator but the image is not empty -> 0
    scores = tolerant_scores(0, 0, 9)
    assert scores == {"iou": 0.0, "dice": 0.0, "precision": 0.0, "recall": 0.0}


def test_scores_from_counts():
    s = tolerant_scores(np.array([6, 0]), np.array([2, 0]), np.array([2, 0]))
    np.testing.assert_allclose(s["iou"], [0.6, 1.0])
    np.testing.assert_allclose(s["dice"], [0.75, 1.0])
    np.testing.assert_allclose(s["precision"], [0.75, 1.0])


# --------------------------------------------------------------------------- against a slow reference


def _reference_outcomes(pred, true, region_rule=True):
    """The rules read literally, pixel by pixel, with a BFS for regions (3x3 element)."""
    h, w = true.shape

    def nbrs(y, x):
        return [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

    def inside(y, x):
        return 0 <= y < h and 0 <= x < w

    def gt2_has(y, x, c):
        return any(inside(*q) and true[q] == c for q in nbrs(y, x))

    def gt3(y, x):
        c = true[y, x]
        return c if c and all(not inside(*q) or true[q] == c for q in nbrs(y, x)) else 0

    wrong = np.zeros((h, w), bool)
    seen = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if pred[y, x] == 0 or seen[y, x]:
                continue
            c, region, queue = pred[y, x], [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                p = queue.popleft()
                region.append(p)
                for q in nbrs(*p):
                    if inside(*q) and not seen[q] and pred[q] == c:
                        seen[q] = True
                        queue.append(q)
            if not any(true[p] == c for p in region):
                for p in region:
                    wrong[p] = True
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            g3, r = gt3(y, x), pred[y, x]
            if g3 and r != g3:
                out[y, x] = FN
            elif r and gt2_has(y, x, r) and not (region_rule and wrong[y, x]):
                out[y, x] = TP
            elif r:
                out[y, x] = FP
    return out


def _blobs(rng, shape, n):
    out = np.zeros(shape, np.uint8)
    for _ in range(n):
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        dy, dx = rng.integers(1, 6, size=2)
        out[y:y + dy, x:x + dx] = rng.integers(1, 3)
    return out


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("region_rule", [True, False])
def test_vectorised_counting_matches_reference(seed, region_rule):
    rng = np.random.default_rng(seed)
    true, pred = _blobs(rng, (16, 20), 4), _blobs(rng, (16, 20), 5)
    if seed % 3 == 0:  # answers that overlap the truth, with some class swaps
        pred = np.where(rng.random(true.shape) < 0.8, true, pred).astype(np.uint8)
    got = outcome_map(pred, true, region_rule=region_rule)
    np.testing.assert_array_equal(got, _reference_outcomes(pred, true, region_rule))
    counts = tolerant_counts(pred, true, region_rule=region_rule)
    assert sum(counts) == true.size


def test_stack_counts_equal_per_image_counts():
    rng = np.random.default_rng(7)
    trues = np.stack([_blobs(rng, (12, 12), 3) for _ in range(4)])
    preds = np.stack([_blobs(rng, (12, 12), 3) for _ in range(4)])
    stacked = tolerant_counts(preds, trues)
    for i in range(4):
        assert tuple(int(a[i]) for a in stacked) == tolerant_counts(preds[i], trues[i])


def test_misclassified_regions_are_whole_regions():
    true = np.zeros((6, 6), np.uint8)
    true[0:2, 0:2] = H
    pred = np.zeros_like(true)
    pred[0:2, 0:3] = I  # one ischemic region over a true hemorrhage
    pred[4:6, 4:6] = H  # one hemorrhage region away from it
    np.testing.assert_array_equal(misclassified_regions(pred, true), pred > 0)


def test_fast_on_full_size_images():
    rng = np.random.default_rng(0)
    true = np.zeros((512, 512), np.uint8)
    true[100:220, 150:300], true[300:360, 200:260] = H, I
    pred = np.where(rng.random(true.shape) < 0.02, rng.integers(1, 3, true.shape), true).astype(np.uint8)
    start = time.perf_counter()
    for _ in range(5):
        counts = tolerant_counts(pred, true)
    assert (time.perf_counter() - start) / 5 < 0.5  # generous: ~20 ms here; 97 test images in seconds
    assert sum(counts) == 512 * 512
