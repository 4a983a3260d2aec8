"""The phantom as 2.5D input sees it: each patient's slices are one DICOM series (SeriesInstanceUID,
ImagePositionPatient, InstanceNumber, SliceLocation) whose header order is the anatomy's (base to vertex), with
one slice step per patient, so only the series' ends lack a neighbour; a lesion spans a run of neighbouring
slices and continues from one to the next (its masks overlap)."""
import numpy as np
import pandas as pd
import pytest

from strokekit.data.index import build_index
from strokekit.data.neighbours import attach_neighbours, fallback_counts, neighbour_plan
from strokekit.data.readers import load_class_map
from strokekit.phantom.dataset import TRUTH_CSV, make_phantom


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = make_phantom(tmp_path_factory.mktemp("series") / "data", n=80, n_test1=12, n_test2=8, size=96, seed=1,
                        workers=1)
    index, _ = build_index(root, cache=False)
    truth = pd.read_csv(root / TRUTH_CSV).rename(columns={"id": "image_id"})
    return index.merge(truth[["image_id", "patient", "level"]], on="image_id", validate="1:1")


def test_header_order_is_the_anatomy(series):
    assert (series.groupby("patient")["series_uid"].nunique() == 1).all()
    assert series.groupby("series_uid")["patient"].nunique().eq(1).all()
    assert series[["slice_position", "instance_number", "slice_location"]].notna().all().all()
    plan = neighbour_plan(series, k=1)
    level = series.set_index("image_id")["level"]
    for patient, group in series.groupby("patient"):
        ordered = group.sort_values("level")["image_id"].tolist()
        for j, image_id in enumerate(ordered):
            below, above = ordered[max(j - 1, 0)], ordered[min(j + 1, len(ordered) - 1)]
            assert plan[image_id][0] == (below, image_id, above), patient
            assert level[below] <= level[image_id] <= level[above]
    counts = fallback_counts(attach_neighbours(series, 1))
    assert counts["replaced"] == counts["edge"] == 2 * series["patient"].nunique()  # no gaps, no unordered slice


def test_lesions_continue_into_the_neighbouring_slice(series):
    overlaps = []
    for _, group in series.groupby("patient"):
        group = group.sort_values("level")
        stroke = (group["class_name"].isin(["ischemic", "hemorrhagic"]) | (group["split"] != "train")
                  ) & (group["has_ischemic"].clip(lower=0) + group["has_hemorrhagic"].clip(lower=0) > 0)
        runs = np.flatnonzero(stroke.to_numpy())
        if not len(runs):
            continue
        assert (np.diff(runs) == 1).all(), "a patient's lesion slices are one run of neighbours"
        maps = [load_class_map(row) > 0 for row in group.iloc[runs].to_dict("records")]
        overlaps += [(a & b).sum() / min(a.sum(), b.sum()) for a, b in zip(maps, maps[1:])]
    assert len(overlaps) > 10 and np.median(overlaps) > 0.5 and min(overlaps) > 0
