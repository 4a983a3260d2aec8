"""losses.py: each loss in both modes, sums of losses, class weights, and unknown names."""
import pytest
import torch
import torch.nn.functional as F

from strokekit.losses import LOSSES, LossNameError, build_loss, parse_loss_spec

BINARY = (torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 2.5], [0.0, 1.0]]), torch.tensor([0, 0, 1, 1]))


def seg_case():
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:8, 4:8] = 1
    target[1, 10:14, 10:14] = 2
    return target


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_loss_is_lower_for_right_logits(name, mode):
    if mode == "binary":
        target = BINARY[1]
        right = F.one_hot(target, 2).float() * 8 - 4
    else:
        target = seg_case()
        right = F.one_hot(target, 3).movedim(-1, 1).float() * 8 - 4
    wrong = -right
    loss = build_loss(name, mode)
    logits = wrong.clone().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert float(loss(right, target)) < float(value.detach())


def test_binary_bce_uses_the_softmax_probability():
    logits, target = BINARY
    p = logits.softmax(dim=1)[:, 1]
    expected = F.binary_cross_entropy(p, target.float())
    assert torch.allclose(build_loss("bce", "binary")(logits, target), expected, atol=1e-6)


def test_class_weights_reach_ce_and_bce():
    logits, target = BINARY
    weights = [1.0, 3.0]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights))
    assert torch.allclose(build_loss("ce", "binary", weights)(logits, target), expected)
    z = logits[:, 1] - logits[:, 0]
    expected = F.binary_cross_entropy_with_logits(z, target.float(), pos_weight=torch.tensor([3.0]))
    assert torch.allclose(build_loss("bce", "binary", weights)(logits, target), expected)


def test_sums_weight_their_parts():
    logits, target = torch.randn(2, 3, 16, 16), seg_case()
    dice, ce = build_loss("dice", "multiclass")(logits, target), build_loss("ce", "multiclass")(logits, target)
    assert torch.allclose(build_loss("dice+ce", "multiclass")(logits, target), dice + ce)
    assert torch.allclose(build_loss({"dice": 1.0, "ce": 0.5}, "multiclass")(logits, target), dice + 0.5 * ce)
    assert torch.allclose(build_loss("0.25*dice + ce", "multiclass")(logits, target), 0.25 * dice + ce)


def test_parse_loss_spec():
    assert parse_loss_spec("dice+ce") == {"dice": 1.0, "ce": 1.0}
    assert parse_loss_spec({"lovasz": 2, "focal": 0.5}) == {"lovasz": 2.0, "focal": 0.5}


@pytest.mark.parametrize("spec", ["dcie", "dice+cee", {"focall": 1.0}, ""])
def test_unknown_loss_lists_the_valid_ones(spec):
    with pytest.raises(LossNameError) as err:
        build_loss(spec, "multiclass")
    assert all(name in str(err.value) for name in LOSSES)
