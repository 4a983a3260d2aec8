"""Multi-scale TTA: batched flips x scales equal the image-by-image computation, scale 1 alone is the flip-only
prediction bit for bit, masks come back at the input's resolution, and bad scales are refused."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from strokekit.cli import ensemble
from strokekit.config.schema import SCHEMA, BadValue
from strokekit.errors import SettingError
from strokekit.models.tta import apply_flip, forward_passes, predict_with_tta, scaled_size
from strokekit.vocabulary import resolve_scales

SCALES = [0.75, 1.0, 1.25]
FLIPS = ["none", "hflip", "vflip"]


def tiny_unet():
    """Down by 2, up by 2: its output size follows the input's, and it sees scale (a 3x3 conv's reach)."""
    torch.manual_seed(0)
    down = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.ReLU())
    up = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="nearest"), torch.nn.Conv2d(4, 3, 3, padding=1))
    return torch.nn.Sequential(down, up).eval()


def tiny_classifier():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()


def one_by_one(model, images, flips, scales, spatial):
    """The reference: every image, flip and scale on its own (F.interpolate directly), probabilities averaged."""
    out = []
    for image in images:
        x = image[None]
        h, w = x.shape[-2:]
        variants = []
        for s in scales:
            size = (h, w) if s == 1 else tuple(max(32, round(n * s / 32) * 32) for n in (h, w))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                        antialias=s < 1)
            for name in flips:
                p = torch.softmax(model(apply_flip(xs, name)), dim=1)
                if spatial:
                    p = apply_flip(p, name)
                    if p.shape[-2:] != (h, w):
                        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False, antialias=s > 1)
                variants.append(p)
        out.append(torch.stack(variants).mean(0)[0])
    return torch.stack(out)


@torch.inference_mode()
@pytest.mark.parametrize("spatial", [True, False])
def test_batched_multiscale_equals_one_by_one(spatial):
    model = tiny_unet() if spatial else tiny_classifier()
    images = torch.rand(3, 2, 64, 96)  # non-square: each side scales on its own
    out = predict_with_tta(model, images, FLIPS, spatial=spatial, scales=SCALES)
    torch.testing.assert_close(out, one_by_one(model, images, FLIPS, SCALES, spatial), rtol=1e-5, atol=1e-6)
    # the scales do something: the multi-scale average is not the flip-only one
    assert not torch.allclose(out, predict_with_tta(model, images, FLIPS, spatial=spatial), atol=1e-4)


@torch.inference_mode()
def test_masks_come_back_at_the_input_resolution():
    images = torch.rand(2, 2, 64, 96)
    for scales in ([0.75], [1.25], [0.5, 2.0], SCALES):
        out = predict_with_tta(tiny_unet(), images, ["none", "hflip"], spatial=True, scales=scales)
        assert out.shape == (2, 3, 64, 96)
        torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 64, 96))  # still probabilities


@torch.inference_mode()
@pytest.mark.parametrize("spatial", [True, False])
def test_scale_one_alone_is_the_flip_only_prediction_exactly(spatial):
    model = tiny_unet() if spatial else tiny_classifier()
    images = torch.rand(4, 2, 64, 64)
    # the flip-only computation as it was before scales: one pass of all flips, un-flipped, averaged
    stacked = torch.cat([apply_flip(images, name) for name in FLIPS])
    parts = torch.softmax(model(stacked), dim=1).split(4)
    if spatial:
        parts = [apply_flip(p, name) for p, name in zip(parts, FLIPS)]
    expected = torch.stack(parts).mean(0)
    assert torch.equal(predict_with_tta(model, images, FLIPS, spatial=spatial, scales=[1.0]), expected)
    assert torch.equal(predict_with_tta(model, images, FLIPS, spatial=spatial), expected)


@torch.inference_mode()
def test_one_forward_pass_per_scale_carrying_every_flip():
    seen = []

    def model(x):
        seen.append(tuple(x.shape))
        return tiny_unet()(x)

    predict_with_tta(model, torch.rand(2, 2, 128, 128), ["none", "hflip"], spatial=True, scales=SCALES)
    assert seen == [(4, 2, 96, 96), (4, 2, 128, 128), (4, 2, 160, 160)]
    cost = forward_passes(n_images=10, batch_size=4, flips=["none", "hflip"], n_models=2, scales=SCALES)
    assert cost["forward_passes"] == 3 * 2 * 3 and cost["images_through_models"] == 10 * 2 * 3 * 2


def test_scaled_sizes_are_stride_multiples():
    assert scaled_size((256, 256), 0.75) == (192, 192) and scaled_size((256, 256), 1.25) == (320, 320)
    assert scaled_size((64, 64), 0.5) == (32, 32) and scaled_size((50, 70), 1.0) == (50, 70)


@pytest.mark.parametrize("bad", [[0.0], [-1.0], [2.5], [0.1, 1.0], [math.nan], [math.inf], [], "big", [True], "0"])
def test_bad_scales_are_refused_with_a_clear_message(bad):
    with pytest.raises(SettingError, match="TTA scale"):
        resolve_scales(bad)
    with pytest.raises(BadValue, match="TTA scales"):
        SCHEMA["oof_tta_scales"].check(bad)


def test_scales_parse_and_default():
    assert resolve_scales(None) == [1.0]
    assert resolve_scales("0.75, 1,1.25") == SCALES
    assert resolve_scales([1, 1.0, 0.5]) == [1.0, 0.5]
    assert resolve_scales(1.25) == [1.25]


def test_ensemble_flag_refuses_bad_scales_before_reading_runs(tmp_path, capsys):
    assert ensemble.main(["--task", "stroke", str(tmp_path / "missing"), "--tta-scales", "0.75,3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TTA scale") and "0.5-2.0" in err and err.count("\n") == 1


def test_the_spec_takes_the_scales_the_oof_was_made_with(capsys):
    runs = [SimpleNamespace(cfg={"oof_tta_scales": [0.75, 1.0]}), SimpleNamespace(cfg={"oof_tta_scales": [0.75, 1]})]
    assert ensemble.submission_scales(runs, None) == [0.75, 1.0]
    assert "warning" not in capsys.readouterr().out
    assert ensemble.submission_scales([SimpleNamespace(cfg={})], None) == [1.0]  # runs from before the key
    assert ensemble.submission_scales(runs, [1.0]) == [1.0]
    assert "oof_tta_scales=1" in capsys.readouterr().out  # the mismatch is said
    flips = [SimpleNamespace(cfg={"oof_tta": ["none"]})]
    assert ensemble.submission_flips(flips, None) == ["none"] and "warning" not in capsys.readouterr().out
    assert ensemble.submission_flips(flips, ["none", "hflip"]) == ["none", "hflip"]
    assert "oof_tta=none,hflip or pass --tta none" in capsys.readouterr().out  # flips are said alike


def test_infer_refuses_bad_scales_before_writing(tmp_path, monkeypatch, capsys):
    import numpy as np

    from helpers import write_png
    from strokekit.cli import infer
    from strokekit.config import load_config
    from strokekit.ensembling.spec import write_spec
    from strokekit.models.checkpoint import build_checkpoint, save_atomic
    from strokekit.models.registry import build_model

    cfg = load_config(None, ["task=stroke", "model=tiny_cnn", "img_size=32"])
    ckpt = tmp_path / "runs" / "a" / "fold0" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), ckpt)
    spec = write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "threshold": {"value": 0.5},
                       "members": [{"name": "m", "weight": 1.0, "checkpoints": ["../runs/a/fold0/best.pt"]}]},
                      tmp_path / "ensembles" / "s.yaml")
    write_png(tmp_path / "YARISMA_1" / "PNG" / "1.png", np.full((32, 32), 40, np.uint8))
    monkeypatch.chdir(tmp_path)
    argv = ["--phase", "1", "--ensemble", str(spec), "--data", "YARISMA_1", "--device", "cpu", "--out", "sub"]
    assert infer.main(argv + ["--tta-scales", "0.1,1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TTA scale") and err.count("\n") == 1
    assert not (tmp_path / "sub").exists()
    assert infer.main(argv + ["--tta-scales", "0.75,1,1.25"]) == 0  # a good set runs (one pass per scale)
    assert "scales 0.75,1,1.25" in capsys.readouterr().out
