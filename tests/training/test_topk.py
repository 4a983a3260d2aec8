"""Checkpoints chosen by what will be submitted: seg epochs selected by the post-processed (phase-2) metric,
and best.pt as the mean weights of a fold's top-k epochs (`topk_average`), the same after an interrupted and
resumed run as after an uninterrupted one."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_phantom
from strokekit.models.checkpoint import read_checkpoint, save_atomic
from strokekit.config import ConfigError, load_config
from strokekit.data.index import build_index
from strokekit.data.readers import load_class_map
from strokekit.postprocess.decide import phase2_class_map
from strokekit.training.engine import train_fold
from strokekit.data.folds import read_folds
from strokekit.evaluation.metrics import dice_score, seg_stats
from strokekit.training.tasks import get_task
from strokekit.training.topk import TopK, average_weights

ROOT = Path(__file__).resolve().parents[2]
PP = {"threshold": 0.35, "min_area": 12}
SEG = ["img_size=64", "oof_size=64", "epochs=5", "batch_size=8", "topk_average=2",
       "select_postprocess={threshold: 0.35, min_area: 12}"]
STROKE = ["img_size=64", "epochs=3", "topk_average=2", "metric=f1_at_best", "batch_size=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("topk"), n=240, seed=4, size=64, n_test1=2, n_test2=2)


class Stop(Exception):
    pass


def train(config: str, sets: list[str], data: Path, run_dir: Path, stop_after: int | None = None,
          resume: bool = False) -> tuple[dict | None, dict]:
    """Train fold 0; returns (summary or None when stopped, {epoch: eval weights read from last.pt})."""
    cfg = load_config(ROOT / "configs" / config, sets + [f"data={data}"])
    index, _ = build_index(data)
    snapshots = {}

    def on_epoch_end(epoch, row):
        ckpt = read_checkpoint(run_dir / "last.pt")
        snapshots[epoch] = ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"]
        if epoch == stop_after:
            raise Stop

    try:
        summary = train_fold(cfg, index, read_folds(data / "folds.csv", index), 0, run_dir, resume_run=resume,
                             progress=False, log=lambda *_: None, on_epoch_end=on_epoch_end)
    except Stop:
        return None, snapshots
    return summary, snapshots


def top_epochs(log: pd.DataFrame, metric: str, k: int) -> list[int]:
    """The k best epochs by the metric (ties: the earlier), from log.csv alone."""
    ranked = sorted(log.itertuples(), key=lambda r: (-getattr(r, metric), r.epoch))
    return [int(r.epoch) for r in ranked[:k]]


def eval_weights(path: Path) -> dict:
    ckpt = read_checkpoint(path)
    return ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].double(), b[name].double(), rtol=1e-5, atol=1e-6), name


def differs(a: dict, b: dict) -> bool:
    return any(not torch.allclose(a[n].double(), b[n].double(), atol=1e-6) for n in a if a[n].is_floating_point())


@pytest.fixture(scope="module")
def seg_run(data, tmp_path_factory, one_thread):
    run_dir = tmp_path_factory.mktemp("seg_topk") / "fold0"
    summary, snapshots = train("tiny_seg.yaml", SEG, data, run_dir)
    return run_dir, summary, snapshots


def test_seg_selects_on_the_postprocessed_metric_and_averages_the_top_epochs(seg_run, data):
    run_dir, summary, snapshots = seg_run
    log = pd.read_csv(run_dir / "log.csv")
    metric = "pp_dice_macro_imagewise_lesion_mean"
    assert summary["metric"] == metric and {metric, "pp_official_iou", "dice_macro_imagewise_lesion_mean"} <= set(log)
    # best.pt's epoch is the best by the post-processed metric logged per epoch
    assert summary["best_epoch"] == top_epochs(log, metric, 1)[0]
    assert summary["best_metric"] == pytest.approx(log[metric].max())
    assert log[metric].max() > 0.05  # the model learned: the ranking is by scores, not by ties at zero

    # best.pt's EMA weights are the mean of the two best epochs' weights (BatchNorm buffers included)
    chosen = top_epochs(log, metric, 2)
    assert summary["topk_average"]["epochs"] == chosen and sorted(snapshots) == [1, 2, 3, 4, 5]
    averaged = eval_weights(run_dir / "best.pt")
    assert_same_weights(averaged, average_weights([snapshots[e] for e in chosen]))
    assert all(differs(averaged, snapshots[e]) for e in chosen)  # a mean, not one epoch's weights
    assert any("running_mean" in name for name in averaged)
    ckpt = read_checkpoint(run_dir / "best.pt")
    assert ckpt["averaged_epochs"] == chosen and ckpt["epoch"] == summary["best_epoch"]
    assert "topk" not in read_checkpoint(run_dir / "last.pt")  # the finished fold drops the kept weights

    # the summary and OOF come from the averaged weights: the phase-2 masks drawn from the OOF file give
    # back the final post-processed Dice, and post-processing changed the score
    final = summary["final_metrics"]
    assert final[metric] == pytest.approx(summary["topk_average"]["averaged_metric"])
    oof = np.load(run_dir / "oof.npz")
    index, _ = build_index(data)
    cfg = load_config(ROOT / "configs" / "tiny_seg.yaml", SEG)
    val = get_task("seg").split(index, read_folds(data / "folds.csv", index), 0, cfg)[1]
    assert oof["image_id"].tolist() == val["image_id"].tolist()
    truth = [load_class_map(row) for row in val.to_dict("records")]
    per_class = []
    for probs, true in zip(oof["probs"].astype(np.float32), truth):
        if true.any():
            per_class.append(dice_score(*seg_stats(phase2_class_map(probs, PP)[0], true), reduction="none")[0])
    per_class = np.array(per_class)
    with np.errstate(invalid="ignore"):
        redone = np.nanmean(np.nanmean(per_class[:, 1:], axis=0))
    assert redone == pytest.approx(final[metric], abs=0.03)
    assert not math.isclose(final[metric], final["dice_macro_imagewise_lesion_mean"], abs_tol=1e-4)


def test_interrupted_and_resumed_equals_uninterrupted_with_topk(seg_run, data, tmp_path, one_thread):
    run_dir, summary, _ = seg_run
    cut = tmp_path / "fold0"
    assert train("tiny_seg.yaml", SEG, data, cut, stop_after=2)[0] is None
    kept = read_checkpoint(cut / "last.pt")["topk"]
    assert sorted(e["epoch"] for e in kept["entries"]) == [1, 2]  # the top-k set survives in last.pt
    # stopped again after the last epoch, before the fold's end; then best.pt spoiled as a kill half-way
    # through the end could leave it: the average comes from last.pt's top-k set, never from best.pt
    assert train("tiny_seg.yaml", SEG, data, cut, stop_after=5, resume=True)[0] is None
    spoiled = read_checkpoint(cut / "best.pt")
    spoiled["ema"] = {k: torch.zeros_like(v) for k, v in spoiled["ema"].items()}
    save_atomic(spoiled, cut / "best.pt")
    resumed, _ = train("tiny_seg.yaml", SEG, data, cut, resume=True)
    assert resumed["topk_average"]["epochs"] == summary["topk_average"]["epochs"]
    assert_same_weights(eval_weights(cut / "best.pt"), eval_weights(run_dir / "best.pt"))
    a, b = pd.read_csv(cut / "log.csv"), pd.read_csv(run_dir / "log.csv")
    assert np.allclose(a["pp_dice_macro_imagewise_lesion_mean"], b["pp_dice_macro_imagewise_lesion_mean"], atol=1e-6)
    assert resumed["final_metrics"]["pp_official_dice"] == pytest.approx(summary["final_metrics"]["pp_official_dice"],
                                                                         abs=1e-6)


def test_classifier_topk_on_f1_at_the_tuned_threshold(data, tmp_path, one_thread):
    """No EMA: the raw model's weights are averaged, ranked by f1_at_best (each epoch's tuned threshold)."""
    run_dir = tmp_path / "fold0"
    summary, snapshots = train("tiny_stroke.yaml", STROKE, data, run_dir)
    log = pd.read_csv(run_dir / "log.csv")
    chosen = top_epochs(log, "f1_at_best", 2)
    assert summary["metric"] == "f1_at_best" and summary["topk_average"]["epochs"] == chosen
    assert read_checkpoint(run_dir / "best.pt")["ema"] is None
    assert_same_weights(eval_weights(run_dir / "best.pt"), average_weights([snapshots[e] for e in chosen]))
    oof = pd.read_csv(run_dir / "oof.csv")
    assert oof["prob"].std() > 0 and len(oof) == summary["n_val"]


def test_topk_ranking_ties_nan_and_a_redone_epoch():
    w = {"x": torch.zeros(2), "n": torch.tensor(3)}
    top = TopK(2, "min")
    for epoch, value in ((1, 0.5), (2, float("nan")), (3, 0.5), (4, 0.2), (5, 0.9)):
        top.offer(epoch, value, lambda e=epoch: {"x": torch.full((2,), float(e)), "n": torch.tensor(e)})
    assert top.epochs == [4, 1]  # lower is better; the tie 0.5 keeps the earlier epoch; NaN never ranks
    mean = top.average()
    assert mean["x"].tolist() == [2.5, 2.5] and mean["n"].item() == 2 and mean["n"].dtype == torch.int64
    top.keep_until(3)  # a resume after epoch 3 redoes epochs 4 and 5
    assert top.epochs == [1]
    top.offer(4, 0.7, lambda: w)
    top.offer(1, 0.8, lambda: w)  # an epoch offered again replaces itself
    assert top.epochs == [4, 1] and top.values == [0.7, 0.8]
    again = TopK(1, "min")
    again.load(top.state())
    assert again.epochs == [4]


def test_select_postprocess_copies_an_ensemble_specs_postprocessing(tmp_path):
    spec = tmp_path / "seg.yaml"
    spec.write_text("task: seg\npostprocess:\n  threshold: {ischemic: 0.4, hemorrhagic: 0.6}\n  min_area: 32\n")
    cfg = load_config(None, ["task=seg", f"select_postprocess={spec}"])
    assert cfg["select_postprocess"] == {"threshold": {"ischemic": 0.4, "hemorrhagic": 0.6}, "min_area": 32}
    spec.write_text("task: seg\n")
    with pytest.raises(ConfigError, match="no `postprocess`"):
        load_config(None, ["task=seg", f"select_postprocess={spec}"])


@pytest.mark.parametrize("sets, message", [
    (["select_postprocess={min_area: 5}"], "for task seg"),
    (["task=seg", "select_postprocess={min_aera: 5}"], "unknown post-processing key"),
    (["task=seg", "select_postprocess={gate: 0.5}"], "gate"),
    (["task=seg", "select_postprocess=5"], "mapping"),
    (["task=seg", "select_postprocess=/nonexistent/seg.yaml"], "neither"),
    (["topk_average=0"], "topk_average"),
])
def test_bad_selection_settings_fail_clearly(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)
