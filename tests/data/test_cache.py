"""data/cache.py and prepare.py: cached items equal uncached ones bit for bit (PNG, DICOM windows, MASK and
OVERLAY class maps, with augmentation); an entry is rebuilt when its source file changes and is keyed by
windows and size; an unwritable cache only warns; persistent workers follow the epoch seed; the training
loop records data_wait."""
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import prepare
from strokekit.config import load_config
from strokekit.data.cache import PreprocessCache, cache_folder
from strokekit.data.dataset import SliceDataset, collate, worker_init_fn
from strokekit.training.loader import make_loader
from strokekit.data.index import build_index
from strokekit.training.engine import train_fold
from strokekit.data.folds import make_folds
from strokekit.phantom.dataset import make_phantom

HEAVY_AUG = ["aug.hflip=0.5", "aug.shift_scale_rotate=1.0", "aug.brightness_contrast=1.0", "aug.elastic=0.5"]
DICOM_3 = ["image_source=dicom", "windows=[[40,80],[80,200],[32,8]]"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """96-px slices with PNG, DICOM, MASK and OVERLAY files (competition layout)."""
    return make_phantom(tmp_path_factory.mktemp("cache") / "data", n=40, size=96, n_test1=2, n_test2=2, workers=1)


@pytest.fixture(scope="module")
def public_phantom(tmp_path_factory) -> Path:
    """The public release's layout: class maps come from OVERLAYs only."""
    return make_phantom(tmp_path_factory.mktemp("cache_public") / "data", n=30, size=96, n_test1=2, n_test2=2,
                        workers=1, layout="public")


def train_rows(root: Path) -> pd.DataFrame:
    index, _ = build_index(root)
    return index[index["split"] == "train"].reset_index(drop=True)


def config(data: Path, cache_dir, *sets: str) -> dict:
    cfg = load_config(None, ["task=seg", "img_size=64", "num_workers=0", f"data={data}", *sets])
    cfg.update(cache=cache_dir is not None, cache_dir=str(cache_dir) if cache_dir else None)
    return cfg


def epoch_items(dataset: SliceDataset, epoch: int) -> list[dict]:
    dataset.reseed(epoch)
    return [dataset[i] for i in range(len(dataset))]


def assert_same_items(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            x, y = (np.asarray(a[key]), np.asarray(b[key]))
            assert x.dtype == y.dtype and np.array_equal(x, y), f"image {a['image_id']}: {key} differs"


@pytest.mark.parametrize("layout,sets", [("competition", []), ("competition", DICOM_3), ("public", [])],
                         ids=["png+mask", "dicom+mask", "png+overlay"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "val"])
def test_cached_items_equal_uncached_ones(phantom, public_phantom, tmp_path, layout, sets, train):
    root = phantom if layout == "competition" else public_phantom
    rows = train_rows(root)
    uncached = SliceDataset(rows, config(root, None, *sets, *HEAVY_AUG), train, masks=True, full_masks=True)
    cached = SliceDataset(rows, config(root, tmp_path, *sets, *HEAVY_AUG), train, masks=True, full_masks=True)
    labelled = int(((rows["mask"] != "") | (rows["overlay"] != "")).sum())
    for epoch in (0, 1):  # epoch 0 fills the cache, epoch 1 reads it back
        assert_same_items(epoch_items(cached, epoch), epoch_items(uncached, epoch))
        assert len(list(tmp_path.rglob("*.npz"))) == len(rows) + labelled
    assert {item["mask_full"].shape for item in epoch_items(cached, 2)} == {(96, 96)}  # metrics stay at 96 px


@pytest.mark.parametrize("sets", [["in_chans=1"], ["image_source=dicom", "windows=[[40,80]]", "in_chans=3"]],
                         ids=["grey", "one-window-repeated"])
def test_classifier_items_equal_and_store_distinct_channels_once(phantom, tmp_path, sets):
    rows = train_rows(phantom)
    targets = (rows["class_name"] != "no_stroke").to_numpy()
    make = lambda cache_dir: SliceDataset(rows, config(phantom, cache_dir, "task=stroke", *sets, *HEAVY_AUG[:3]),
                                          True, targets=targets)
    cached, uncached = make(tmp_path), make(None)
    for epoch in (0, 1):
        assert_same_items(epoch_items(cached, epoch), epoch_items(uncached, epoch))
    entry = np.load(next(tmp_path.rglob("*.npz")))
    assert entry["image"].shape == (64, 64, 1) and entry["image"].dtype == np.uint8


def copy_rows(phantom: Path, folder: Path, n: int = 3) -> pd.DataFrame:
    """The first n labelled rows with their files copied to `folder`, so the test may change them."""
    rows = train_rows(phantom)
    rows = rows[rows["mask"] != ""].head(n).reset_index(drop=True)
    for column in ("png", "dicom", "mask"):
        for i, src in enumerate(rows[column]):
            dst = folder / column / Path(src).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            rows.loc[i, column] = str(dst)
    return rows


def test_entry_is_rebuilt_when_its_source_changes(phantom, tmp_path):
    rows = copy_rows(phantom, tmp_path / "files")
    cfg = config(phantom, tmp_path / "cache")
    cached = SliceDataset(rows, cfg, train=False, masks=True, full_masks=True)
    before = [cached[i] for i in range(len(rows))]
    png, mask = Path(rows.at[0, "png"]), Path(rows.at[0, "mask"])
    Image.fromarray(255 - np.asarray(Image.open(png).convert("L"))).save(png)  # new content and mtime
    Image.fromarray(np.asarray(Image.open(mask).convert("RGB"))[::-1].copy()).save(mask)
    os.utime(mask, ns=(os.stat(mask).st_atime_ns, os.stat(mask).st_mtime_ns + 10**9))
    after = [cached[i] for i in range(len(rows))]
    assert_same_items(after, [SliceDataset(rows, dict(cfg, cache=False), False, masks=True, full_masks=True)[i]
                              for i in range(len(rows))])
    assert not np.array_equal(after[0]["image"], before[0]["image"])
    assert np.array_equal(after[0]["mask_full"], before[0]["mask_full"][::-1])
    assert_same_items(after[1:], before[1:])
    assert cached.cache.written == 2 * len(rows) + 2  # the changed image and class map, written again


def test_key_follows_windows_size_and_source(phantom, tmp_path):
    row = train_rows(phantom).iloc[0].to_dict()
    key = lambda *sets: PreprocessCache(tmp_path, config(phantom, tmp_path, *sets)).key(
        "image", [row["png"]], PreprocessCache(tmp_path, config(phantom, tmp_path, *sets)).image_params)
    assert key() == key("windows=[[80,200]]")  # a PNG does not depend on the HU windows ...
    assert key("image_source=dicom") != key("image_source=dicom", "windows=[[80,200]]")  # ... a DICOM does
    assert key() != key("img_size=32") and key() != key("image_source=dicom")
    narrow, wide = (PreprocessCache(tmp_path, config(phantom, tmp_path, "image_source=dicom", f"windows=[[40,{w}]]"))
                    .image(row)[0] for w in (20, 400))
    assert not np.array_equal(narrow, wide)


def test_unwritable_cache_folder_warns_and_reads_the_files(phantom, tmp_path):
    rows = train_rows(phantom).head(4)
    (tmp_path / "a_file").write_text("not a folder")
    cfg = config(phantom, tmp_path / "a_file" / "cache")
    with pytest.warns(UserWarning, match="not writable"):
        got = epoch_items(SliceDataset(rows, cfg, False, masks=True, full_masks=True), 0)
    assert_same_items(got, epoch_items(SliceDataset(rows, dict(cfg, cache=False), False, masks=True,
                                                    full_masks=True), 0))


def test_default_folder_is_beside_the_data_and_the_index_ignores_it(phantom, tmp_path):
    cfg = config(phantom, None)
    assert cache_folder(dict(cfg, cache=True)) == phantom / ".strokekit" / "cache"
    assert cache_folder(dict(cfg, cache=True, data=str(tmp_path / "missing"))) is None  # nothing is created
    assert cache_folder(dict(cfg, cache=False, cache_dir=str(tmp_path))) is None
    before = train_rows(phantom)
    dataset = SliceDataset(before.head(3), dict(cfg, cache=True), False, masks=True)
    [dataset[i] for i in range(3)]
    assert len(list((phantom / ".strokekit" / "cache").rglob("*.npz"))) >= 3
    pd.testing.assert_frame_equal(train_rows(phantom), before)


def test_prepare_fills_what_training_reads(phantom, tmp_path, capsys):
    args = ["--data", str(phantom), "--set", "task=seg", "img_size=64", "--cache-dir", str(tmp_path), "--workers", "2"]
    assert prepare.main(args) == 0
    assert prepare.main(args) == 0
    assert "0 entries written" in capsys.readouterr().out.splitlines()[-1]
    rows = train_rows(phantom)
    for train in (True, False):
        dataset = SliceDataset(rows, config(phantom, tmp_path), train, masks=True, full_masks=not train)
        [dataset[i] for i in range(len(dataset))]
        assert dataset.cache.written == 0


def test_persistent_workers_follow_the_epoch_seed(phantom, tmp_path):
    """Kept-alive workers reseed from (epoch seed, worker id) as restarted ones do: a resumed run sees the
    augmentations an uninterrupted one saw."""
    cfg = config(phantom, tmp_path, *HEAVY_AUG, "num_workers=2", "batch_size=4")
    dataset = SliceDataset(train_rows(phantom).head(16), cfg, train=True, masks=True)
    persistent = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate, worker_init_fn=worker_init_fn,
                            persistent_workers=True)
    seen = []
    for epoch in range(3):
        dataset.reseed(100 + epoch)
        kept = torch.cat([batch["image"] for batch in persistent])
        dataset.reseed(100 + epoch)
        fresh = torch.cat([batch["image"] for batch in make_loader(dataset, cfg, torch.device("cpu"))])
        assert torch.equal(kept, fresh)
        seen.append(kept)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_training_logs_the_share_spent_waiting_for_data(phantom, tmp_path):
    index, _ = build_index(phantom)
    folds = make_folds(index, n_folds=4, seed=0)
    cfg = load_config(None, ["model=tiny_cnn", "img_size=32", "epochs=2", "batch_size=8", "num_workers=1",
                             f"data={phantom}", f"cache_dir={tmp_path / 'cache'}"])
    summary = train_fold(cfg, index, folds, 0, tmp_path / "run", progress=False, log=lambda *_: None)
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["data_wait"].between(0, 1).all() and log["data_wait"].gt(0).all()  # a worker start is a wait
    assert summary["data_wait"] == pytest.approx(log["data_wait"].mean(), abs=1e-4)
