"""losses.py: each loss in both modes, sums of losses, class weights, and unknown names."""
import pytest
import torch
import torch.nn.functional as F

from strokekit.training.losses import LOSSES, LesionAuxLoss, LossNameError, build_loss, lesion_cells, parse_loss_spec

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


def test_lesion_cells_mark_every_cell_a_lesion_touches():
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[0, 5, 5] = 2             # one hemorrhage pixel: cell (1, 1) of a 4x4 grid
    mask[0, 12:16, 0:8] = 1       # ischemia over cells (3, 0) and (3, 1)
    cells = lesion_cells(mask, (4, 4))
    want = torch.zeros(1, 2, 4, 4)
    want[0, 1, 1, 1] = 1
    want[0, 0, 3, 0:2] = 1
    assert torch.equal(cells, want)


def test_aux_loss_weighs_lesion_cells_as_much_as_the_rest():
    base = build_loss("ce", "binary")
    label, mask = torch.tensor([1]), torch.zeros(1, 32, 32, dtype=torch.long)
    mask[0, 0, 0] = 2  # one lesion cell of 64
    logits = torch.tensor([[0.0, 2.0]])
    never = torch.full((1, 2, 8, 8), -6.0)  # a head that says "no lesion" everywhere
    right = never.clone()
    right[0, 1, 0, 0] = 6.0
    aux = LesionAuxLoss(base, 1.0)
    assert float(aux(logits, (label, mask))) == pytest.approx(float(base(logits, label)))  # eval: no head output
    missed = float(aux((logits, never), (label, mask))) - float(base(logits, label))
    assert missed > 2.5  # half the weight on the missed cell: 0.5 * 6.0; a plain mean would give 0.1
    assert float(aux((logits, right), (label, mask))) < float(base(logits, label)) + 0.01
    with pytest.raises(ValueError, match="no masks"):
        aux((logits, never), label)
