"""decide.py: phase-1 labels at the threshold, the phase-2 fallback for empty masks, per-image types."""
import numpy as np
import pytest

from strokekit.postprocess.decide import (fallback_region, phase1_labels, phase2_class_map, type_class,
                                          type_decision)
from strokekit.vocabulary import image_type


def probs_with_blob(shape=(32, 32), centre=(10, 20), radius=3, p_isc=0.3, p_hem=0.1) -> np.ndarray:
    """(3, H, W) probabilities: a lesion blob below any 0.5 threshold, background elsewhere."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    blob = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    probs = np.zeros((3, *shape), np.float32)
    probs[1][blob], probs[2][blob] = p_isc, p_hem
    probs[1][~blob], probs[2][~blob] = 0.01, 0.01
    probs[0] = 1 - probs[1] - probs[2]
    return probs


def test_phase1_labels_use_the_threshold_inclusively():
    assert phase1_labels([0.1, 0.3, 0.29999, 0.9], 0.3).tolist() == [0, 1, 0, 1]


def test_empty_post_processing_falls_back_to_the_most_probable_region():
    probs = probs_with_blob()
    class_map, used = phase2_class_map(probs, {"threshold": 0.5}, max_area=0.1)
    blob = probs[1] > 0.2
    assert used and class_map.any()
    assert np.array_equal(class_map > 0, blob) and set(np.unique(class_map[blob])) == {1}  # ischemic dominates
    empty, used = phase2_class_map(probs, {"threshold": 0.5}, fallback=False)
    assert not used and not empty.any()


def test_fallback_is_not_used_when_post_processing_keeps_a_lesion():
    probs = probs_with_blob(p_isc=0.1, p_hem=0.7)
    class_map, used = phase2_class_map(probs, {"threshold": 0.5})
    assert not used and set(np.unique(class_map)) == {0, 2}


def test_fallback_class_follows_a_type_decision_and_the_area_is_capped():
    probs = probs_with_blob(radius=10)
    region = fallback_region(probs, lesion_class=type_class(0.8, 0.5))
    assert set(np.unique(region)) == {0, 2}  # the type classifier said hemorrhagic
    capped = fallback_region(probs, max_area=0.05)
    assert 0 < np.count_nonzero(capped) <= 0.05 * capped.size
    flat = np.full((3, 16, 16), 1 / 3, np.float32)  # no information at all: still one small region
    assert 0 < np.count_nonzero(fallback_region(flat, max_area=0.02)) <= 5
    with pytest.raises(ValueError):
        fallback_region(probs, fraction=0.0)


def test_types_from_classifier_or_mask():
    class_map = np.zeros((8, 8), np.uint8)
    class_map[:2, :2], class_map[4:, 4:] = 1, 2
    assert image_type(class_map) == "both" and image_type(np.zeros((4, 4), np.uint8)) == "none"
    assert type_decision(class_map) == "hemorrhagic"  # 16 hemorrhagic pixels > 4 ischemic
    assert type_decision(class_map, p_hemorrhagic=0.2, threshold=0.4) == "ischemic"
    assert type_class(None, 0.5) is None and type_class(0.3, 0.5) == 1
