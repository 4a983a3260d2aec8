"""train.py's warnings about configs that validate but are known not to learn (config/advice.py)."""
from pathlib import Path

import pytest

import train
from strokekit.config import load_config
from strokekit.config.advice import advice, from_scratch_loss

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"


@pytest.mark.parametrize("config, sets, warned", [
    ("deep_ensemble/seg_unet_r34", ["pretrained=false"], "--set class_weights=[1,30,30]"),        # plain CE
    ("vgg_unet/seg_unet_scse", ["pretrained=false"], "--set class_weights=[1,30,30]"),            # CE [1, 3, 3]
    ("dpn_unet/seg_dpn92_hypercolumn", [], "loss=bce class_weights=[1,30,30]"),                   # sigmoid focal
    ("dpn_unet/seg_dpn92_hypercolumn", ["class_weights=[1,30,30]"], "loss=bce"),  # focal: channels, not pixels
    ("deep_ensemble/seg_unet_r34", [], None),                                      # ImageNet weights
    ("deep_ensemble/seg_unet_r34", ["pretrained=false", "class_weights=[1,30,30]"], None),
    ("multitask/seg_unet_r50", ["pretrained=false"], None),                        # Dice alone learned
    ("dpn_unet/seg_dpn92_hypercolumn", ["loss=bce", "class_weights=[1,30,30]"], None),
    ("../unet_r34_seg", ["pretrained=false"], None),                               # ships the weighted loss
    ("deep_ensemble/stroke_resnet34", ["pretrained=false"], None),                 # classifiers: not this rule
])
def test_from_scratch_losses_that_drew_nothing_are_warned_about(config, sets, warned):
    text = from_scratch_loss(load_config(RECIPES / f"{config}.yaml", sets))
    assert (text is None) if warned is None else (warned in text and "from scratch" in text)


def test_train_py_says_it_before_training(tmp_path, capsys):
    config = RECIPES / "deep_ensemble" / "seg_unet_r34.yaml"
    assert advice(load_config(config, ["pretrained=false"]))
    # the warning comes first; the missing data set then stops the run before anything trains
    assert train.main(["--config", str(config), "--fold", "0", "--data", str(tmp_path / "nothing"), "--no-progress",
                       "--set", "pretrained=false"]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("warning: deep_ensemble_seg_unet_r34: from scratch") and "error:" in out.err
