"""data/pseudo.py and the training side of pseudo-labels, on a hand-made pseudo-label folder: its rows join
every fold's training rows and never a validation set, its ignore mask reaches the training mask as
IGNORE_LABEL, and folders that must not be trained on are refused (ids of training images, not pseudo.py's).
inference/pseudo_labels.label_image: the confidence filters and the never-empty prior."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strokekit.config import ConfigError, load_config
from strokekit.data.dataset import SliceDataset
from strokekit.data.encodings import class_map_to_rgb
from strokekit.data.pseudo import PseudoLabelError, pseudo_rows, read_labels
from strokekit.inference.pseudo_labels import Confidence, label_image
from strokekit.training.tasks import get_task
from strokekit.vocabulary import IGNORE_LABEL

SIZE = 32


def lesion_map(image_id: int) -> np.ndarray:
    class_map = np.zeros((SIZE, SIZE), np.uint8)
    class_map[8:16, 8 + image_id % 8:16 + image_id % 8] = 2
    return class_map


def write_image_and_mask(folder, image_id, class_map, mask_dir="MASK", png_dir="PNG"):
    (folder / png_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(class_map > 0, 200, 60).astype(np.uint8)).save(folder / png_dir / f"{image_id}.png")
    Image.fromarray(class_map_to_rgb(class_map)).save(folder / mask_dir / f"{image_id}.png")


def pseudo_folder(folder, ids, drop=()):
    """A pseudo-label folder as pseudo.py writes one: labels.csv, MASK/, IGNORE/ (a ring around each lesion),
    PNG/, manifest.json."""
    (folder / "IGNORE").mkdir(parents=True)
    records = []
    for image_id in ids:
        class_map = lesion_map(image_id)
        write_image_and_mask(folder, image_id, class_map)
        ignore = np.zeros((SIZE, SIZE), np.uint8)
        ignore[6:18, 6 + image_id % 8:18 + image_id % 8] = 255
        ignore[8:16, 8 + image_id % 8:16 + image_id % 8] = 0
        Image.fromarray(ignore, "L").save(folder / "IGNORE" / f"{image_id}.png")
        kept = image_id not in drop
        records.append({"image_id": image_id, "kept": int(kept), "reason": "" if kept else "image confidence 0.1 < 0.5",
                        "png": f"PNG/{image_id}.png", "dicom": "", "mask": f"MASK/{image_id}.png",
                        "ignore": f"IGNORE/{image_id}.png", "has_ischemic": 0, "has_hemorrhagic": 1,
                        "confidence": 0.9, "lesion_pixels": 64, "labelled_lesion_pixels": 64,
                        "ignored_pixels": int((ignore > 0).sum()), "fallback": 0})
    pd.DataFrame(records).to_csv(folder / "labels.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({"written_by": "pseudo.py", "files": {}}))
    return folder


@pytest.fixture
def project(tmp_path):
    """A training index of 8 hemorrhage slices in 2 folds, and a pseudo folder of 3 test images (one dropped)."""
    rows = []
    for image_id in range(1, 9):
        write_image_and_mask(tmp_path / "train", image_id, lesion_map(image_id))
        rows.append({"image_id": image_id, "split": "train", "class_name": "hemorrhagic",
                     "png": str(tmp_path / "train" / "PNG" / f"{image_id}.png"), "dicom": "",
                     "mask": str(tmp_path / "train" / "MASK" / f"{image_id}.png"), "overlay": "", "stroke": 1,
                     "has_ischemic": 0, "has_hemorrhagic": 1, "patient_id": "", "study_uid": "", "series_uid": ""})
    for image_id in (101, 102, 103):  # the test images sit in the index too (their truth unread by training)
        rows.append({**rows[0], "image_id": image_id, "split": "test2", "class_name": "", "mask": "",
                     "has_hemorrhagic": -1, "has_ischemic": -1})
    index = pd.DataFrame(rows)
    folds = pd.DataFrame({"image_id": range(1, 9), "fold": [0, 1] * 4, "group": [f"g{i}" for i in range(1, 9)],
                          "stratum": "x"})
    folder = pseudo_folder(tmp_path / "pseudo", [101, 102, 103], drop=(103,))
    return index, folds, folder


def seg_cfg(folder=None, **extra):
    sets = ["task=seg", "model=tiny_unet", f"img_size={SIZE}", "num_workers=0", "cache=false", "loss=ce"]
    cfg = load_config(None, sets)
    cfg["aug"].update({k: 0.0 for k in ("hflip", "vflip", "shift_scale_rotate", "brightness_contrast", "elastic")})
    cfg["pseudo"] = None if folder is None else str(folder)
    cfg.update(extra)
    return cfg


def test_pseudo_rows_join_every_folds_training_and_no_validation(project):
    index, folds, folder = project
    task = get_task("seg")
    for fold in (0, 1):
        plain_train, plain_val = task.split(index, folds, fold, seg_cfg())
        train, val = task.split(index, folds, fold, seg_cfg(folder))
        pseudo = train[train["split"] == "pseudo"]
        assert sorted(pseudo["image_id"]) == [101, 102]             # the kept ones; 103 was dropped
        assert (pseudo["fold"] == -1).all()
        assert len(train) == len(plain_train) + 2                    # train + pseudo
        assert val["image_id"].tolist() == plain_val["image_id"].tolist()  # validation untouched
        assert not set(val["image_id"]) & {101, 102, 103}
        assert all(p.startswith(str(folder)) for p in pseudo["mask"])  # labels from the pseudo folder only


def test_the_ignore_mask_reaches_the_training_mask_as_the_ignore_label(project):
    index, folds, folder = project
    train, _ = get_task("seg").split(index, folds, 0, seg_cfg(folder))
    dataset = SliceDataset(train, seg_cfg(folder), train=True, masks=True)
    by_id = {int(r["image_id"]): k for k, r in enumerate(dataset.rows)}
    mask = dataset[by_id[101]]["mask"].numpy()
    ignore = np.asarray(Image.open(folder / "IGNORE" / "101.png")) > 0
    expected = np.where(ignore, IGNORE_LABEL, lesion_map(101))
    assert np.array_equal(mask, expected)
    assert set(np.unique(dataset[by_id[2]]["mask"].numpy())) <= {0, 1, 2}  # a training row: no ignore


def test_ids_of_training_images_are_refused(project, tmp_path):
    index, folds, _ = project
    clash = pseudo_folder(tmp_path / "clash", [3, 101])
    with pytest.raises(PseudoLabelError, match="training images"):
        pseudo_rows(clash, index)
    with pytest.raises(PseudoLabelError, match="training images"):
        get_task("seg").split(index, folds, 0, seg_cfg(clash))


def test_a_folder_pseudo_py_did_not_write_is_refused(project, tmp_path):
    index, _, folder = project
    with pytest.raises(PseudoLabelError, match="does not exist"):
        pseudo_rows(tmp_path / "nothing", index)
    (folder / "manifest.json").write_text(json.dumps({"written_by": "infer.py"}))
    with pytest.raises(PseudoLabelError, match="not a pseudo-label folder"):
        read_labels(folder)


def test_everything_dropped_is_refused(project, tmp_path):
    index, _, _ = project
    folder = pseudo_folder(tmp_path / "none", [101], drop=(101,))
    with pytest.raises(PseudoLabelError, match="every image was dropped"):
        pseudo_rows(folder, index)


def test_pseudo_is_a_seg_key():
    with pytest.raises(ConfigError, match="pseudo"):
        load_config(None, ["task=stroke", "pseudo=somewhere"])
    assert load_config(None, ["task=seg", "pseudo=somewhere"])["pseudo"] == "somewhere"


def probs_for(p_lesion: np.ndarray, hem_share: float = 1.0) -> np.ndarray:
    return np.stack([1 - p_lesion, p_lesion * (1 - hem_share), p_lesion * hem_share]).astype(np.float32)


def test_label_image_ignores_unsure_pixels_and_drops_unsure_images():
    p = np.full((SIZE, SIZE), 0.05)
    p[8:16, 8:16] = 0.95          # a sure lesion core
    p[6:8, 8:16] = 0.6            # its unsure rim, decided lesion
    p[20:24, 20:24] = 0.9         # a blob post-processing removed (decided background)
    class_map = np.zeros((SIZE, SIZE), np.uint8)
    class_map[6:16, 8:16] = 2
    label = label_image(class_map, probs_for(p), Confidence(pixel=0.75, image=0.5))
    assert label["kept"] == 1 and label["has_hemorrhagic"] == 1 and label["has_ischemic"] == 0
    expected_ignore = np.zeros((SIZE, SIZE), bool)
    expected_ignore[6:8, 8:16] = True      # lesion decided at P(lesion) 0.6 < 0.75
    expected_ignore[20:24, 20:24] = True   # background decided at P(background) 0.1 < 0.75
    assert np.array_equal(label["ignore"], expected_ignore)
    assert label["labelled_lesion_pixels"] == 64 and label["lesion_pixels"] == 80
    # the image's confidence is the mean P(lesion) over its decided lesion pixels: (64 * .95 + 16 * .6) / 80
    assert label["confidence"] == pytest.approx((64 * 0.95 + 16 * 0.6) / 80, abs=1e-5)
    assert label_image(class_map, probs_for(p), Confidence(pixel=0.75, image=0.9))["kept"] == 0
    # never-empty prior: an image whose lesion pixels are all unsure is dropped, not taught as lesion-free
    unsure = label_image(class_map, probs_for(np.where(p > 0.5, 0.6, p)), Confidence(pixel=0.75, image=0.5))
    assert unsure["kept"] == 0 and "every lesion pixel" in unsure["reason"]
    empty = label_image(np.zeros_like(class_map), probs_for(p), Confidence())
    assert empty["kept"] == 0 and empty["reason"] == "no lesion decided"
    with pytest.raises(PseudoLabelError):
        Confidence(pixel=1.5)
