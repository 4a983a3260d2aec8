"""data/neighbours.py (2.5D input, config `neighbours`): series order from shuffled headers (position beats
instance number beats slice location; ties and mixed series), gaps, the declared fallback and its counts,
the stacked channels, the preprocessing cache's key, the config check, and the refusal of an HU array."""
import numpy as np
import pandas as pd
import pytest

from helpers import write_dicom, write_png
from strokekit.config import ConfigError, load_config
from strokekit.data.cache import PreprocessCache
from strokekit.data.dataset import SliceDataset
from strokekit.data.index import build_index
from strokekit.data.neighbours import (NeighbourError, attach_neighbours, describe_counts, fallback_counts,
                                       load_input, neighbour_plan, source_files)
from strokekit.data.readers import load_image
from strokekit.inference.predict import read_input

NAN = np.nan


def pool(*series) -> pd.DataFrame:
    """Rows from (series_uid, [(image_id, position, instance, location), ...]) groups, shuffled."""
    rows = [{"image_id": i, "png": f"{i}.png", "dicom": f"{i}.dcm", "series_uid": uid, "slice_position": p,
             "instance_number": n, "slice_location": loc} for uid, items in series for i, p, n, loc in items]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def order(plan: dict, image_id: int) -> tuple:
    return plan[image_id][0]


def test_position_beats_instance_beats_location():
    # positions say 1 < 2 < 3; instance numbers and slice locations say otherwise
    plan = neighbour_plan(pool(("s", [(1, 0.0, 3, 20.0), (2, 5.0, 1, 0.0), (3, 10.0, 2, 10.0)])), k=1)
    assert order(plan, 2) == (1, 2, 3) and plan[2][1] == ()
    # no positions: instance numbers order (2 < 3 < 1), slice locations ignored
    plan = neighbour_plan(pool(("s", [(1, NAN, 3, 20.0), (2, NAN, 1, 30.0), (3, NAN, 2, 0.0)])), k=1)
    assert order(plan, 3) == (2, 3, 1)
    # neither: slice locations (3 < 2 < 1)
    plan = neighbour_plan(pool(("s", [(1, NAN, NAN, 20.0), (2, NAN, NAN, 10.0), (3, NAN, NAN, 0.0)])), k=1)
    assert order(plan, 2) == (3, 2, 1)


def test_ties_and_mixed_series_fall_to_the_next_tag():
    # two slices at one position (a tie): instance numbers order the series
    plan = neighbour_plan(pool(("s", [(1, 0.0, 2, NAN), (2, 0.0, 3, NAN), (3, 5.0, 1, NAN)])), k=1)
    assert order(plan, 1) == (3, 1, 2)
    # one slice without a position (a mixed series): instance numbers order all of them
    plan = neighbour_plan(pool(("s", [(1, 0.0, 1, NAN), (2, NAN, 2, NAN), (3, 10.0, 3, NAN)])), k=1)
    assert order(plan, 2) == (1, 2, 3)
    # a slice with no order tag at all is left out (no_order), the rest ordered without it
    plan = neighbour_plan(pool(("s", [(1, 0.0, 1, NAN), (2, NAN, NAN, NAN), (3, 5.0, 3, NAN)])), k=1)
    assert order(plan, 2) == (2, 2, 2) and plan[2][1] == ("no_order", "no_order")
    assert order(plan, 1) == (1, 1, 3)
    # every tag tied: the series is not ordered
    plan = neighbour_plan(pool(("s", [(1, 0.0, 1, 5.0), (2, 0.0, 1, 5.0)])), k=1)
    assert plan[1][1] == ("no_order", "no_order")


def test_series_are_ordered_apart_and_gaps_break_neighbours():
    rows = pool(("a", [(1, 0.0, 1, NAN), (2, 5.0, 2, NAN), (3, 10.0, 3, NAN), (4, 30.0, 4, NAN)]),
                ("b", [(11, 2.5, 1, NAN), (12, 7.5, 2, NAN)]),
                ("", [(21, NAN, NAN, NAN)]))  # a PNG-only image: no series
    plan = neighbour_plan(rows, k=1)
    assert order(plan, 2) == (1, 2, 3) and order(plan, 11) == (11, 11, 12)  # series b never borrows from a
    assert order(plan, 3) == (2, 3, 3) and plan[3][1] == ("gap",)           # 30 mm is past 1.5 x 5 mm
    assert order(plan, 4) == (4, 4, 4) and sorted(plan[4][1]) == ["edge", "gap"]
    assert plan[21] == ((21, 21, 21), ("no_series", "no_series"))
    # k = 2: the fallback repeats the nearest slice towards the centre, and counts each replaced offset
    plan = neighbour_plan(rows, k=2)
    assert order(plan, 1) == (1, 1, 1, 2, 3) and plan[1][1] == ("edge", "edge")
    assert order(plan, 3) == (1, 2, 3, 3, 3) and plan[3][1] == ("gap", "gap")
    counts = fallback_counts(attach_neighbours(rows, 1))
    assert counts == {"slices": 7, "offsets": 14, "replaced": 8, "edge": 4, "gap": 2, "no_order": 0,
                      "no_series": 2}
    assert describe_counts(counts).startswith("neighbours: 8 of 14 neighbouring slices (57%)")


def test_order_from_shuffled_dicom_headers(tmp_path):
    """The index reads the order tags from the headers; files named against the anatomy's order; tilted
    orientation: the position counts along the slice normal, not its z."""
    import pydicom

    rng = np.random.default_rng(0)
    tilt = np.deg2rad(20)
    row_dir, col_dir = [1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)]
    normal = np.cross(row_dir, col_dir)
    ids = [10004, 10001, 10003, 10002, 10000]  # slice j (base to vertex) gets ids[j]
    for j, image_id in enumerate(ids):
        path = write_dicom(tmp_path / "TRAINING" / "INMEYOK" / "DICOM" / f"{image_id}.dcm",
                           rng.integers(900, 1100, (16, 16)).astype(np.int16))
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = row_dir + [float(v) for v in col_dir]
        in_plane = 3.0 * np.asarray(row_dir) + 40.0 * j * np.asarray(col_dir)  # z falls as the slices rise
        ds.ImagePositionPatient = [float(v) for v in 5.0 * j * normal + in_plane]
        ds.InstanceNumber, ds.SliceLocation = 5 - j, 7.0 * ((j * 3) % 5)
        ds.save_as(path)
    index, _ = build_index(tmp_path, cache=False)
    assert np.allclose(index.set_index("image_id").loc[ids, "slice_position"], 5.0 * np.arange(5))
    plan = neighbour_plan(index, k=1)
    assert [order(plan, i) for i in ids[1:4]] == [tuple(ids[0:3]), tuple(ids[1:4]), tuple(ids[2:5])]
    # the same from the headers alone (paths given to the Predictor carry no index columns)
    paths_only = index[["image_id", "png", "dicom"]]
    assert neighbour_plan(paths_only, k=1) == plan


def test_stack_and_cache_key(tmp_path):
    """Channels are the slices at -1, 0, +1; the fallback repeats the slice; the cache key holds the
    neighbour setting and the neighbours' files, so a stale entry is never read; cached == uncached."""
    greys = {i: np.full((32, 32), 40 * i, np.uint8) for i in range(1, 4)}
    rows = pd.DataFrame([{"image_id": i, "png": str(write_png(tmp_path / f"{i}.png", g)), "dicom": "",
                          "series_uid": "s", "slice_position": 5.0 * i, "instance_number": NAN,
                          "slice_location": NAN} for i, g in greys.items()])
    cfg = load_config(None, ["neighbours=1", "img_size=32", f"cache_dir={tmp_path / 'cache'}"])
    prepared = attach_neighbours(rows, 1).to_dict("records")
    assert load_input(prepared[1], cfg)[0, 0].tolist() == [40, 80, 120]
    assert load_input(prepared[0], cfg)[0, 0].tolist() == [40, 40, 80]    # series edge: the slice repeated
    plain = load_config(None, ["img_size=32", f"cache_dir={tmp_path / 'cache'}"])
    assert load_input(prepared[1], plain)[0, 0].tolist() == [80, 80, 80]  # neighbours: 0 as before
    cache, plain_cache = PreprocessCache(tmp_path / "cache", cfg), PreprocessCache(tmp_path / "cache", plain)
    key = lambda c, row: c.key("image", source_files(row, c.cfg), c.image_params)
    assert key(cache, prepared[1]) != key(plain_cache, prepared[1])
    moved = dict(prepared[1], neighbours=(prepared[1]["neighbours"][1],) * 3)  # neighbours now repeat the slice
    assert key(cache, moved) != key(cache, prepared[1])
    for row in prepared:
        image, hw = cache.image(row)
        assert hw == (32, 32) and np.array_equal(image, load_input(row, cfg))
    assert cache.written == 3
    assert np.array_equal(cache.image(prepared[1])[0], load_input(prepared[1], cfg)) and cache.written == 3
    assert np.array_equal(plain_cache.image(prepared[1])[0], load_image(prepared[1], plain))
    # a dataset given rows without neighbours looks them up among its own rows
    item = SliceDataset(rows, dict(cfg, cache=False), train=False)[1]
    assert item["image"].shape == (3, 32, 32) and len(set(item["image"][:, 0, 0].tolist())) == 3


def test_config_and_single_array():
    with pytest.raises(ConfigError, match="in_chans must be 6"):
        load_config(None, ["neighbours=1", "image_source=dicom", "windows=[[40,80],[80,200]]"])
    with pytest.raises(ConfigError, match="neighbours"):
        load_config(None, ["neighbours=5"])
    assert load_config(None, ["neighbours=1", "image_source=dicom", "windows=[[40,80],[80,200]]",
                              "in_chans=6"])["in_chans"] == 6
    cfg = load_config(None, ["neighbours=1"])
    with pytest.raises(NeighbourError, match="single HU array"):
        read_input({"image_id": 0, "hu": np.zeros((8, 8), np.float32), "source": "array[0]",
                    "png_window": (40, 80)}, cfg)
    with pytest.raises(NeighbourError, match="no neighbours were looked up"):
        load_input({"image_id": 0, "png": "x.png"}, cfg)


def test_prepare_fills_what_training_with_neighbours_reads(tmp_path):
    """prepare.py looks neighbours up as training does (the whole index), so a fold's datasets find every entry;
    the folds keep a patient's series together, so a validation slice's neighbours are validation slices."""
    import prepare
    from strokekit.data.folds import make_folds
    from strokekit.phantom.dataset import make_phantom
    from strokekit.training.tasks import get_task

    data = make_phantom(tmp_path / "data", n=24, size=64, n_test1=2, n_test2=2, workers=1)
    sets = ["task=seg", "img_size=64", "neighbours=1", f"cache_dir={tmp_path / 'cache'}", f"data={data}"]
    assert prepare.main(["--data", str(data), "--workers", "1", "--set", *sets]) == 0
    cfg = load_config(None, sets)
    index, _ = build_index(data)
    folds = make_folds(index, n_folds=2, seed=0)
    train, val = get_task("seg").split(index, folds, 0, cfg)
    fold_of = dict(zip(folds["image_id"], folds["fold"]))
    assert {fold_of[e["image_id"]] for row in val["neighbours"] for e in row} == {0}
    for rows, is_train in ((train, True), (val, False)):
        dataset = SliceDataset(rows, cfg, is_train, masks=True, full_masks=not is_train)
        [dataset[i] for i in range(len(dataset))]
        assert dataset.cache.written == 0
