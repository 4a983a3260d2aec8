"""Seg validation's patientwise scores (the DPN-U-Net paper validates by "mean IoU per patient"): each
patient's lesion slices pooled into one IoU / Dice, then the mean over patients."""
import numpy as np
import pytest
import torch

from strokekit.config import load_config
from strokekit.evaluation.metrics import SegStats, pooled_by_group
from strokekit.training.tasks import get_task
from strokekit.training.validation import patients_of


def square(side: int, size: int = 8) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[:side, :side] = 1
    return m


def batch_of(truths, preds, ids):
    """A validation batch and its probabilities: one-hot of the predicted class maps."""
    probs = torch.nn.functional.one_hot(torch.as_tensor(np.stack(preds)).long(), 3).permute(0, 3, 1, 2).float()
    return {"mask_full": [torch.as_tensor(t) for t in truths], "image_id": torch.as_tensor(ids)}, probs


def finished(groups):
    task = get_task("seg")
    state = task.new_state(load_config(None, ["task=seg"]))
    # patient A: 4 px found exactly (IoU 1) and 16 px missed (IoU 0); patient B: 2 of 4 px found (IoU 0.5)
    truths = [square(2), square(4), square(2)]
    preds = [square(2), np.zeros((8, 8), np.uint8), np.pad(np.ones((1, 2), np.uint8), ((0, 7), (0, 6)))]
    batch, probs = batch_of(truths, preds, [10, 11, 12])
    task.accumulate(state, batch, probs)
    state["groups"] = groups
    return task.finish(state)


def test_patientwise_pools_each_patients_slices():
    out = finished({10: "A", 11: "A", 12: "B"})
    assert out["iou_macro_imagewise_ischemic"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert out["iou_patientwise_ischemic"] == pytest.approx((4 / 20 + 0.5) / 2)    # A: 4 of 4 + 16 px
    assert out["dice_patientwise_ischemic"] == pytest.approx((8 / 24 + 2 * 2 / 6) / 2)
    assert out["iou_patientwise_lesion_mean"] == pytest.approx(out["iou_patientwise_ischemic"])  # no hemorrhage
    assert out["iou_patientwise_any_lesion"] == pytest.approx(out["iou_patientwise_ischemic"])


def test_without_patients_each_image_is_its_own():
    out = finished({10: "image-10", 11: "image-11", 12: "image-12"})
    assert out["iou_patientwise_ischemic"] == pytest.approx(out["iou_macro_imagewise_ischemic"])


def test_pooled_by_group_keeps_first_appearance_order():
    counts = np.arange(12).reshape(4, 3)
    stats = SegStats(counts, counts, counts, counts)
    pooled = pooled_by_group(stats, ["b", "a", "b", "c"])
    assert pooled.tp.tolist() == [[6, 8, 10], [3, 4, 5], [9, 10, 11]]


def test_patients_of_falls_back_to_study_series_image():
    rows = [{"image_id": 1, "patient_id": "P1", "study_uid": "S", "series_uid": "X"},
            {"image_id": 2, "patient_id": "", "study_uid": "S2", "series_uid": "X"},
            {"image_id": 3, "patient_id": "", "study_uid": "", "series_uid": ""}]
    assert patients_of(rows) == {1: "P1", 2: "S2", 3: "image-3"}
    assert patients_of([{"image_id": 4}]) == {4: "image-4"}   # a PNG-only index
