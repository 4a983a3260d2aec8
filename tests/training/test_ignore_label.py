"""Every seg loss skips the pixels whose target is IGNORE_LABEL (pseudo-labels' uncertain pixels): the logits
there get no gradient, and the loss equals the loss with those pixels' targets set to anything else and their
logits changed. Classifier (binary) losses are unaffected (no ignore value there)."""
import pytest
import torch

from strokekit.training.losses import LOSSES, DeepSupervisionLoss, build_loss
from strokekit.vocabulary import IGNORE_LABEL


def _case(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    target = torch.randint(0, 3, (2, 8, 8), generator=gen)
    ignore = torch.zeros(2, 8, 8, dtype=torch.bool)
    ignore[:, 2:5, 1:6] = True
    return logits, target, ignore


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_get_no_gradient_and_do_not_count(name):
    loss_fn = build_loss(name, "multiclass", [1.0, 5.0, 5.0] if name in ("ce", "bce", "focal") else None)
    logits, target, ignore = _case()
    marked = target.masked_fill(ignore, IGNORE_LABEL)
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, marked)
    loss.backward()
    assert torch.isfinite(loss)
    grad_ignored = x.grad.abs().sum(1)[ignore]
    assert float(grad_ignored.max()) == 0.0, f"{name}: ignored pixels got a gradient"
    assert float(x.grad.abs().sum(1)[~ignore].max()) > 0
    # the loss does not depend on what the ignored pixels' logits are
    other = logits.clone()
    other[:, :, 2:5, 1:6] = torch.randn(2, 3, 3, 5) * 10
    assert torch.allclose(loss_fn(other, marked), loss.detach(), atol=1e-6)


def test_deep_supervision_keeps_the_ignore_label_at_every_stage():
    base = build_loss("ce", "multiclass")
    logits, target, ignore = _case(1)
    marked = target.masked_fill(ignore, IGNORE_LABEL)
    stage = torch.randn(2, 3, 4, 4, requires_grad=True)
    main = logits.clone().requires_grad_(True)
    loss = DeepSupervisionLoss(base)((main, [stage]), marked)
    loss.backward()
    assert float(main.grad.abs().sum(1)[ignore].max()) == 0.0
    # stage 1 is a 4x4 nearest resize: cells whose sample pixel is ignored get no gradient
    small = torch.nn.functional.interpolate(marked[:, None].float(), size=(4, 4), mode="nearest")[:, 0]
    assert float(stage.grad.abs().sum(1)[small == IGNORE_LABEL].max()) == 0.0


def test_an_all_ignored_target_trains_nothing():
    logits, target, _ = _case(2)
    x = logits.clone().requires_grad_(True)
    loss = build_loss("ce", "multiclass")(x, torch.full_like(target, IGNORE_LABEL))
    assert loss.item() == 0.0  # not torch's nan (0 / 0), which would stop training
