"""data/dataset.py: joint augmentation keeps masks aligned and labels exact, workers are seeded apart,
and the samplers deliver the balance they promise."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from strokekit.config import load_config
from strokekit.data.dataset import BalancedSampler, LesionBatchSampler, SliceDataset, collate, normalise
from strokekit.training.loader import make_loader
from strokekit.data.encodings import class_map_to_rgb

SIZE = 64


def write_slice(folder, image_id: int, class_map: np.ndarray) -> dict:
    """A grey PNG that is bright exactly where the class map has a lesion, plus its MASK."""
    image = np.where(class_map > 0, 220, 40).astype(np.uint8)
    image[:, : SIZE // 8] = 90  # a left-edge band makes flips visible on the image too
    png, mask = folder / f"{image_id}.png", folder / f"{image_id}_mask.png"
    Image.fromarray(image).save(png)
    Image.fromarray(class_map_to_rgb(class_map)).save(mask)
    return {"image_id": image_id, "split": "train", "class_name": "hemorrhagic", "png": str(png), "dicom": "",
            "mask": str(mask), "overlay": "", "has_ischemic": int((class_map == 1).any()),
            "has_hemorrhagic": int((class_map == 2).any())}


def two_class_map(offset: int = 0) -> np.ndarray:
    class_map = np.zeros((SIZE, SIZE), np.uint8)
    class_map[10 + offset:30 + offset, 36:50] = 2
    class_map[30 + offset:44 + offset, 36:50] = 1  # touches the hemorrhage: a 1|2 border to interpolate across
    return class_map


def cfg_with(**aug) -> dict:
    cfg = load_config(None, ["task=seg", f"img_size={SIZE}", "num_workers=0"])
    cfg["aug"].update({k: 0.0 for k in ("hflip", "vflip", "shift_scale_rotate", "brightness_contrast", "elastic")})
    cfg["aug"].update(aug)
    return cfg


def test_flip_moves_image_and_mask_together(tmp_path):
    rows = pd.DataFrame([write_slice(tmp_path, 1, two_class_map())])
    item = SliceDataset(rows, cfg_with(hflip=1.0), train=True, masks=True)[0]
    image, mask = item["image"][0].numpy(), item["mask"].numpy()
    assert np.array_equal(mask, two_class_map()[:, ::-1])
    bright = image > image.mean() + 1.5  # normalised 220 vs 40 / 90
    assert np.array_equal(bright, mask > 0)


def test_heavy_augmentation_keeps_exact_labels(tmp_path):
    rows = pd.DataFrame([write_slice(tmp_path, i, two_class_map(offset=i)) for i in range(4)])
    cfg = cfg_with(hflip=0.5, vflip=0.5, shift_scale_rotate=1.0, brightness_contrast=1.0, elastic=1.0)
    cfg["aug"].update(rotate_limit=40, scale_limit=0.3)
    dataset = SliceDataset(rows, cfg, train=True, masks=True, full_masks=True)
    changed = 0
    for epoch in range(6):
        dataset.reseed(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            labels = set(np.unique(item["mask"].numpy()).tolist())
            assert labels <= {0, 1, 2}
            assert item["mask"].dtype == torch.int64 and item["mask"].shape == (SIZE, SIZE)
            assert np.array_equal(item["mask_full"], two_class_map(offset=i))  # untouched original
            changed += not np.array_equal(item["mask"].numpy(), two_class_map(offset=i))
    assert changed > 12  # the augmentation did act


def test_nearest_neighbour_adds_no_in_between_label(tmp_path):
    class_map = np.zeros((SIZE, SIZE), np.uint8)
    class_map[16:48, 16:48] = 2  # only 0 and 2: linear interpolation would create 1 on the border
    rows = pd.DataFrame([write_slice(tmp_path, 7, class_map)])
    cfg = cfg_with(shift_scale_rotate=1.0, elastic=1.0)
    cfg["aug"].update(rotate_limit=30, scale_limit=0.3)
    dataset = SliceDataset(rows, cfg, train=True, masks=True)
    for seed in range(10):
        dataset.reseed(seed)
        assert set(np.unique(dataset[0]["mask"].numpy()).tolist()) <= {0, 2}


def test_normalise_uses_mean_and_std():
    image = np.full((4, 4, 3), 255, np.uint8)
    out = normalise(image, {"mean": [0.5, 0.0, 1.0], "std": 0.5})
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 2.0, 0.0]))


def test_workers_get_different_augmentation_streams(tmp_path):
    rows = pd.DataFrame([write_slice(tmp_path, i, two_class_map()) for i in range(32)])
    cfg = cfg_with(hflip=0.5)
    cfg["num_workers"] = 2
    dataset = SliceDataset(rows, cfg, train=True, masks=True)
    loader = make_loader(dataset, dict(cfg, batch_size=1), torch.device("cpu"))
    flipped = [bool(batch["mask"][0, 12, 40] == 0) for batch in loader]  # lesion moved away by the flip
    # batches alternate between the two workers; unseeded copies of one Compose would flip in lockstep
    assert flipped[0::2] != flipped[1::2]
    assert 4 < sum(flipped) < 28


def test_collate_keeps_full_masks_as_a_list():
    batch = collate([{"image": torch.zeros(3, 2, 2), "image_id": 5, "mask_full": np.zeros((4, 4))},
                     {"image": torch.ones(3, 2, 2), "image_id": 6, "mask_full": np.zeros((8, 8))}])
    assert batch["image"].shape == (2, 3, 2, 2) and batch["image_id"].tolist() == [5, 6]
    assert [m.shape for m in batch["mask_full"]] == [(4, 4), (8, 8)]


@pytest.mark.parametrize("share,batch_size", [(0.5, 8), (0.25, 8), (1.0, 4), (0.0, 4)])
def test_lesion_sampler_gives_the_asked_share(share, batch_size):
    has_lesion = np.array([True] * 10 + [False] * 90)
    sampler = LesionBatchSampler(has_lesion, batch_size, share, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100 // batch_size
    for batch in batches:
        assert len(batch) == batch_size
        assert has_lesion[batch].sum() == round(share * batch_size)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches  # a resumed epoch sees the same batches


def test_lesion_sampler_refuses_an_empty_pool():
    with pytest.raises(ValueError, match="seg_negatives"):
        LesionBatchSampler(np.ones(20, bool), 8, 0.5)
    with pytest.raises(ValueError, match="no training slice holds a lesion"):
        LesionBatchSampler(np.zeros(20, bool), 8, 0.5)


def test_balanced_sampler_evens_out_classes():
    labels = np.array([0] * 180 + [1] * 20)
    sampler = BalancedSampler(labels, seed=1)
    drawn = np.concatenate([labels[list(sampler)] for sampler.epoch in range(10)])
    assert len(drawn) == 2000
    assert 0.45 < drawn.mean() < 0.55
