"""seg_head: sigmoid (the DPN-U-Net's head): two independent lesion channels trained each on its own 0/1 map,
read downstream as 3-class maps whose lesion channels are the two sigmoids (models/sigmoid_head.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from strokekit.config import ConfigError, load_config
from strokekit.data.folds import make_folds, write_folds
from strokekit.data.index import build_index
from strokekit.models.registry import build_model, load_checkpoint
from strokekit.models.sigmoid_head import SigmoidLesionHead, pad_background, sigmoid_maps
from strokekit.training.losses import LossNameError, build_loss
from strokekit.vocabulary import IGNORE_LABEL

ROOT = Path(__file__).resolve().parents[2]
SIGMOID = ["task=seg", "model=tiny_unet", "img_size=64", "seg_head=sigmoid"]


def test_softmax_of_the_padded_logits_is_the_two_sigmoids_given_not_both():
    odds = torch.randn(4, 2, 8, 8, dtype=torch.float64) * 3
    probs = pad_background(odds).softmax(1)
    p, q = torch.sigmoid(odds[:, 0]), torch.sigmoid(odds[:, 1])
    expected = torch.stack([(1 - p) * (1 - q), p * (1 - q), q * (1 - p)], 1) / (1 - p * q)[:, None]
    assert torch.allclose(probs, expected, atol=1e-9)
    # a lesion class wins exactly where its sigmoid is above 0.5 and above the other's
    wins = (odds.max(1).values > 0).long() * (1 + odds.argmax(1))
    assert torch.equal(probs.argmax(1), wins)


def test_the_maps_hold_the_sigmoids_themselves_and_decode_as_the_softmax():
    """OOF files and infer.py keep [1 - max(p, q), p, q]: the paper's threshold (k = 0.47 on p) and its
    averaging of models act on the sigmoids, not on the softmax's p(1-q)/(1-pq); the argmax is the same."""
    odds = torch.randn(4, 2, 8, 8, dtype=torch.float64) * 3
    maps = sigmoid_maps(pad_background(odds))
    p, q = torch.sigmoid(odds[:, 0]), torch.sigmoid(odds[:, 1])
    assert torch.allclose(maps[:, 1], p.float()) and torch.allclose(maps[:, 2], q.float())
    assert torch.equal(maps.argmax(1), pad_background(odds).softmax(1).argmax(1))
    both = sigmoid_maps(pad_background(torch.full((1, 2, 1, 1), 0.4)))  # p = q = 0.60: the paper marks both
    assert (both[0, 1:] >= 0.47).all() and not (pad_background(torch.full((1, 2, 1, 1), 0.4)).softmax(1)[0, 1:]
                                                 >= 0.47).any()


def test_multilabel_losses_score_each_channel_on_its_own():
    logits = pad_background(torch.randn(2, 2, 16, 16, requires_grad=True))
    target = torch.randint(0, 3, (2, 16, 16))
    target[0, :4] = IGNORE_LABEL
    odds = logits[:, 1:]
    maps = torch.stack([target == 1, target == 2], 1).float()
    valid = (target != IGNORE_LABEL)[:, None].expand_as(maps)
    bce = F.binary_cross_entropy_with_logits(odds[valid], maps[valid])
    assert torch.allclose(build_loss("bce", "multilabel")(logits, target), bce, atol=1e-6)
    # the gradient of one channel does not depend on the other channel (it does under the softmax CE)
    a = torch.zeros(1, 1, 4, 4, requires_grad=True)
    grads = {}
    for mode, loss in (("multilabel", "bce"), ("multiclass", "ce")):
        for b in (-4.0, 4.0):
            out = build_loss(loss, mode)(pad_background(torch.cat([a, torch.full_like(a, b)], 1)),
                                         torch.zeros(1, 4, 4, dtype=torch.long))
            grads[mode, b] = torch.autograd.grad(out, a)[0]
    assert torch.allclose(grads["multilabel", -4.0], grads["multilabel", 4.0])
    assert not torch.allclose(grads["multiclass", -4.0], grads["multiclass", 4.0])
    for name in ("focal", "dice", "batch_dice", "image_dice"):
        value = build_loss(name, "multilabel")(logits, target)
        (grad,) = torch.autograd.grad(value, logits, retain_graph=True)
        assert torch.isfinite(value) and grad[0, :, :4].abs().max() == 0  # ignored pixels: no gradient


def test_softmax_losses_are_refused_with_a_sigmoid_head():
    with pytest.raises(ConfigError, match="loss: ce is for the softmax head"):
        load_config(None, [*SIGMOID, "loss=dice+ce"])
    with pytest.raises(LossNameError, match="lovasz is for the softmax head"):
        build_loss("lovasz", "multilabel")
    with pytest.raises(ConfigError, match="seg_head"):
        load_config(None, ["task=stroke", "seg_head=sigmoid"])


@pytest.mark.parametrize("extra", [[], ["deep_supervision=2"], ["model=hypercolumn_unet", "encoder=resnet18"]])
def test_every_seg_model_takes_the_head(extra):
    cfg = load_config(None, [*SIGMOID, "loss=focal", *extra])
    model = build_model(cfg)
    assert isinstance(model, SigmoidLesionHead)
    out = model.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64) and out[:, 0].abs().max() == 0


@pytest.mark.slow
def test_a_sigmoid_head_trains_and_its_checkpoint_reproduces_the_oof(tmp_path):
    from strokekit.phantom.dataset import make_phantom

    data = make_phantom(tmp_path / "data", n=60, seed=3, size=64, n_test1=2, n_test2=2)
    index, _ = build_index(data)
    write_folds(make_folds(index, n_folds=2, seed=0), data / "folds.csv")
    assert train.main(["--config", str(ROOT / "configs" / "tiny_seg.yaml"), "--fold", "0", "--data", str(data),
                       "--out", str(tmp_path / "runs"), "--no-progress", "--set", "seg_head=sigmoid",
                       "loss=bce+batch_dice", "epochs=2", "img_size=64", "oof_size=64", "oof_tta=[none]",
                       "num_workers=0", "ema=false"]) == 0
    run = tmp_path / "runs" / "tiny_seg" / "fold0"
    oof = np.load(run / "oof.npz")
    stored = oof["probs"].astype(np.float32)               # the sigmoid maps, not a softmax summing to 1
    assert np.allclose(stored[:, 0], 1 - stored[:, 1:].max(1), atol=2e-3)
    model, cfg = load_checkpoint(run / "best.pt")
    assert isinstance(model, SigmoidLesionHead) and cfg["seg_head"] == "sigmoid"
    from strokekit.data.dataset import SliceDataset
    from strokekit.training.tasks import get_task

    task = get_task("seg")
    rows = task.rows(index, cfg, train=False)
    rows = rows[rows["image_id"].isin(oof["image_id"][:4])]
    batch = torch.stack([SliceDataset(rows, cfg, False, masks=True)[i]["image"] for i in range(len(rows))])
    with torch.no_grad():
        probs = sigmoid_maps(model(batch)).numpy()
    assert np.allclose(probs, oof["probs"][:4].astype(np.float32), atol=1e-2)


def test_infer_predicts_the_same_sigmoid_maps():
    """infer.py / Predictor (inference/predict.member_probs) make a sigmoid member's maps as the OOF pass does."""
    from strokekit.inference.predict import Member, member_probs

    cfg = load_config(None, [*SIGMOID, "loss=bce"])
    model = build_model(cfg).eval()
    batch = torch.randn(2, cfg["in_chans"], 64, 64)
    with torch.no_grad():
        maps = member_probs(Member("m", cfg, [model], [], [cfg]), batch, ["none", "hflip"], True, None)
        flipped = torch.flip(model(torch.flip(batch, dims=[-1])), dims=[-1])
        expected = (sigmoid_maps(model(batch)) + sigmoid_maps(flipped)) / 2
    assert torch.allclose(maps, expected, atol=1e-5)
