"""What a U-Net needs to learn tiny lesions from scratch (nnU-Net's ingredients), each as a config key:
foreground-oversampled crops, batch Dice, deep supervision, the poly schedule, instance / group norm and
the augmentation menu."""
import copy

import numpy as np
import pytest
import torch

from strokekit.config import DEFAULTS, ConfigError, load_config
from strokekit.data.dataset import build_transform, foreground_crop
from strokekit.models.deep_supervision import DeepSupervision, stage_weights
from strokekit.models.norm import group_count, replace_batchnorm
from strokekit.models.registry import TinyUNet, build_model
from strokekit.training.losses import DeepSupervisionLoss, build_loss
from strokekit.training.optim import LrSchedule


def lesion_slice(size=128, lesion=(60, 64, 70, 75)):
    mask = np.zeros((size, size), np.uint8)
    y0, y1, x0, x1 = lesion
    mask[y0:y1, x0:x1] = 2
    image = np.random.default_rng(0).integers(0, 255, (size, size, 1), dtype=np.uint8)
    return image, mask


@pytest.mark.parametrize("share", [0.0, 0.33, 1.0])
def test_foreground_crops_hold_lesion_pixels_at_the_asked_share(share):
    image, mask = lesion_slice()
    rng = np.random.default_rng(1)
    n = 3000
    with_lesion = sum(bool(foreground_crop(image, mask, 32, share, rng)[1].any()) for _ in range(n))
    # a random 32-px crop of a 128-px slice holds this 4x6-px lesion with probability ~ (32+4)(32+6)/97^2 ~ 0.15
    chance = (32 + 3) * (32 + 5) / (128 - 32 + 1) ** 2
    expected = share + (1 - share) * chance
    assert abs(with_lesion / n - expected) < 0.04, (with_lesion / n, expected)


def test_foreground_crop_keeps_image_and_mask_aligned_and_pads_outside():
    image, mask = lesion_slice(size=64, lesion=(0, 3, 0, 3))      # a lesion in the corner
    image[..., 0] = np.arange(64 * 64).reshape(64, 64) % 251
    crop_image, crop_mask = foreground_crop(image, mask, 32, 1.0, np.random.default_rng(0))
    assert crop_image.shape == (32, 32, 1) and crop_mask.shape == (32, 32)
    inside = crop_mask == 2
    assert inside.any()
    # wherever the crop shows the lesion, it shows the same image pixels as the slice's lesion
    assert set(crop_image[inside, 0].tolist()) <= set(image[mask == 2, 0].tolist())
    assert crop_image[0].max() == 0 and crop_mask[0].max() == 0      # centred near row 0: the top row lies outside


def test_batch_dice_equals_its_definition_on_a_hand_made_batch():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1            # ischemia in image 0 only
    target[1, 2:, 1:3] = 2           # hemorrhage in image 1 only
    p = logits.softmax(1)
    expected = []
    for c in (1, 2):                 # foreground only, one Dice per class over the whole batch
        y = (target == c).float()
        expected.append((2 * (p[:, c] * y).sum() + 1e-5) / (p[:, c].sum() + y.sum() + 1e-5))
    loss = build_loss("batch_dice", "multiclass")(logits, target)
    assert torch.allclose(loss, 1 - torch.stack(expected).mean(), atol=1e-6)
    per_image = build_loss("image_dice", "multiclass")(logits, target)
    assert not torch.allclose(per_image, loss)      # a class absent from an image counts there


def test_deep_supervision_losses_reach_every_head():
    torch.manual_seed(0)
    model = DeepSupervision(TinyUNet(1, 3, width=8), in_chans=1, num_outputs=3, depth=3).train()
    main, stages = model(torch.randn(2, 1, 32, 32))
    assert main.shape == (2, 3, 32, 32) and [s.shape[-1] for s in stages] == [16]   # tiny_unet: one stage
    loss = DeepSupervisionLoss(build_loss("dice+ce", "multiclass"))((main, stages), torch.randint(0, 3, (2, 32, 32)))
    loss.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.heads)
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)       # eval: the plain output


def test_deep_supervision_on_an_smp_unet_supervises_its_decoder_stages():
    cfg = load_config(None, ["task=seg", "model=Unet", "encoder=resnet18", "img_size=64", "deep_supervision=3",
                             "in_chans=1"])
    model = build_model(cfg).train()
    main, stages = model(torch.randn(2, 1, 64, 64))
    assert [s.shape[-1] for s in stages] == [32, 16, 8]          # finest first
    target = torch.randint(0, 3, (2, 64, 64))
    loss_fn = DeepSupervisionLoss(build_loss("batch_dice+ce", "multiclass"))
    loss_fn((main, stages), target).backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in model.heads)
    assert sum(stage_weights(3)) == pytest.approx(1.0) and stage_weights(3)[0] > stage_weights(3)[1]


def test_norm_swaps_every_batchnorm_and_keeps_the_affine_parameters():
    net = TinyUNet(1, 3, width=8)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.weight.data.fill_(2.0)
    for kind, cls in (("instance", torch.nn.InstanceNorm2d), ("group", torch.nn.GroupNorm)):
        swapped = replace_batchnorm(copy.deepcopy(net), kind)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in swapped.modules())
        norms = [m for m in swapped.modules() if isinstance(m, cls)]
        assert norms and norms[0].weight.data.eq(2.0).all()
    assert group_count(48) == 24 and group_count(7) == 7


def test_poly_schedule_decays_to_zero_as_nnunet_does():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    cfg = dict(DEFAULTS, scheduler="poly", lr=1e-2, epochs=10, warmup_epochs=0.0)
    schedule = LrSchedule(opt, cfg, steps_per_epoch=10)
    assert schedule.lr() == pytest.approx(1e-2)
    schedule.step_count = 50
    assert schedule.lr() == pytest.approx(1e-2 * 0.5 ** 0.9)
    schedule.step_count = 99
    assert schedule.lr() < 1e-3


def test_augmentation_menu_moves_masks_with_images():
    cfg = copy.deepcopy(DEFAULTS)
    cfg["img_size"] = 64
    cfg["aug"].update(hflip=0.0, shift_scale_rotate=0.0, brightness_contrast=0.0, rot90=1.0)
    image, mask = lesion_slice(size=64, lesion=(2, 6, 10, 20))
    image[..., 0] = np.where(mask == 2, 255, 0)
    transform = build_transform(cfg, train=True)
    for _ in range(8):
        out = transform(image=image, mask=mask)
        assert ((out["mask"] == 2) == (out["image"][..., 0] == 255)).all()
    cfg["aug"].update(rot90=0.0, gamma=1.0, low_res=1.0, noise=1.0, blur=1.0, clahe=1.0, grid_distortion=1.0,
                      coarse_dropout=1.0)
    out = build_transform(cfg, train=True)(image=image, mask=mask)
    assert out["image"].shape == image.shape and set(np.unique(out["mask"])) <= {0, 2}


@pytest.mark.parametrize("sets", [["crop_size=100"], ["crop_size=512"], ["task=stroke", "crop_size=64"],
                                  ["task=stroke", "deep_supervision=2"], ["norm=layer"], ["aug.rot90=2"]])
def test_bad_from_scratch_keys_are_refused_up_front(sets):
    with pytest.raises(ConfigError):
        load_config(None, ["task=seg", "img_size=256", *sets] if "task=stroke" not in sets else sets)
