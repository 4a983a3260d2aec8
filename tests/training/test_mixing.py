"""Mixup and CutMix (training/mixing.py, config mixup / cutmix / mix_prob): the pasted box carries its mask, the
label weights are the pixels' shares, draws repeat on resume, and seg refuses mixup before any data is read."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strokekit.config import ConfigError, load_config
from strokekit.training.losses import LesionAuxLoss, build_loss
from strokekit.training.mixing import draw_mix


def cfg_with(**keys) -> dict:
    cfg = load_config(None, ["task=stroke"])
    cfg.update(keys)
    return cfg


def class_maps(n=6, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, size, size), generator=g)


def test_cutmix_pastes_the_mask_with_the_pixels_and_weighs_labels_by_area():
    masks = class_maps()
    images = masks[:, None].float().repeat(1, 3, 1, 1)  # each pixel shows its own class
    for batch in range(20):
        mix = draw_mix(cfg_with(cutmix=1.0), images, epoch=0, batch=batch)
        assert mix.kind == "cutmix"
        mixed = mix.images(images)
        assert torch.equal(mixed[:, 0].long(), mix.paste(masks))  # the mask matches the mixed pixels everywhere
        y0, y1, x0, x1 = mix.box
        from_other = (y1 - y0) * (x1 - x0) / 32 ** 2
        assert mix.lam == pytest.approx(1 - from_other)  # lam = the share of the image left as it was
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed[:, :, ~inside], images[:, :, ~inside])


def test_seg_loss_sees_the_pasted_mask():
    masks = class_maps()
    images = masks[:, None].float()
    mix = draw_mix(cfg_with(cutmix=1.0), images, epoch=1, batch=3)
    logits = F.one_hot(mix.paste(masks), 3).permute(0, 3, 1, 2).float() * 50  # a perfect prediction of the paste
    loss = build_loss("ce", "multiclass")
    assert float(mix.loss(loss, logits, masks, "seg")) < 1e-6
    assert float(loss(logits, masks)) > 0.05  # against the unpasted masks it is wrong (mask and box do matter)


def test_mixup_blends_images_and_weighs_both_labels():
    images = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    mix = draw_mix(cfg_with(mixup=0.4), images, epoch=2, batch=0)
    assert mix.kind == "mixup" and 0 < mix.lam < 1
    assert torch.allclose(mix.images(images), mix.lam * images + (1 - mix.lam) * images[mix.perm])
    logits = torch.randn(8, 2)
    loss = build_loss("ce", "binary")
    expected = mix.lam * loss(logits, labels) + (1 - mix.lam) * loss(logits, labels[mix.perm])
    assert torch.allclose(mix.loss(loss, logits, labels, "stroke"), expected)


def test_aux_seg_mask_follows_the_mix_and_gradients_flow():
    masks = class_maps(n=4, size=16)
    labels = (masks.flatten(1) > 0).any(1).long()
    loss = LesionAuxLoss(build_loss("ce", "binary"), 1.0)
    logits = torch.randn(4, 2, requires_grad=True)
    lesion = torch.randn(4, 2, 4, 4, requires_grad=True)
    for kind in ("mixup", "cutmix"):
        mix = draw_mix(cfg_with(**{kind: 1.0}), masks[:, None].float(), epoch=0, batch=1)
        value = mix.loss(loss, (logits, lesion), (labels, masks), "stroke")
        value.backward()
        assert torch.isfinite(value) and lesion.grad.abs().sum() > 0
        if kind == "cutmix":  # both label terms score the lesion head against the pasted mask
            pasted = mix.paste(masks)
            head = loss((logits, lesion), (labels, pasted)) - loss.base(logits, labels)
            expected = (mix.lam * loss.base(logits, labels) + (1 - mix.lam) * loss.base(logits, labels[mix.perm])
                        + head)
            assert torch.allclose(value, expected)
    everywhere = torch.ones(4, 16, 16, dtype=torch.long)  # every cell holds lesion: no NaN from an empty mean
    assert torch.isfinite(loss((logits, lesion), (labels, everywhere)))


def test_draws_repeat_for_the_same_batch_and_stop_when_off():
    images = torch.randn(8, 1, 16, 16)
    cfg = cfg_with(mixup=0.4, cutmix=1.0)
    first, again = draw_mix(cfg, images, 3, 5), draw_mix(cfg, images, 3, 5)
    assert (first.kind, first.lam, first.box) == (again.kind, again.lam, again.box)
    assert torch.equal(first.perm, again.perm)  # a resumed epoch mixes its batches as the first run did
    kinds = {draw_mix(cfg, images, 0, b).kind for b in range(40)}
    assert kinds == {"mixup", "cutmix"}
    assert draw_mix(cfg_with(), images, 0, 0) is None
    assert draw_mix(cfg_with(mixup=0.4, mix_prob=0.0), images, 0, 0) is None
    mixed = sum(draw_mix(cfg_with(mixup=0.4, mix_prob=0.5), images, 0, b) is not None for b in range(200))
    assert 70 < mixed < 130


def test_seg_refuses_mixup_when_the_config_is_read():
    with pytest.raises(ConfigError, match="mixup: blends labels"):
        load_config(None, ["task=seg", "mixup=0.4"])
    assert load_config(None, ["task=seg", "cutmix=1.0"])["cutmix"] == 1.0
    with pytest.raises(ConfigError, match="mix_prob"):
        load_config(None, ["mix_prob=1.5"])
