"""Encoder / head parameter groups: lr_groups multiplies each group's LR, freeze_epochs keeps the encoder at
LR 0 (its weights untouched) for that many epochs, then it trains; a model without an encoder part refuses."""
import pytest
import torch

from strokekit.config import load_config
from strokekit.models.registry import build_model
from strokekit.training.optim import LrSchedule, build_optimizer
from strokekit.training.param_groups import ParamGroupError, encoder_parameters, split_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def _steps(model, optimizer, schedule, n, seg=False):
    for _ in range(n):
        x = torch.randn(2, 3, 32, 32)
        out = model(x)
        loss = out.float().pow(2).mean() if seg else out.logsumexp(1).mean() - out[:, 1].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()


@pytest.mark.parametrize("sets", [["model=tiny_cnn"], ["model=resnet18"],
                                  ["task=seg", "model=Unet", "encoder=resnet18"]])
def test_groups_cover_every_parameter_once(sets):
    model = build_model(load_config(None, sets))
    split = split_parameters(model)
    ids = [id(p) for group in split.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert split["encoder"] and split["head"]
    if "model=resnet18" in sets:  # timm: the head is the classifier layer alone
        assert {id(p) for p in split["head"]} == {id(p) for p in model.get_classifier().parameters()}


@pytest.mark.parametrize("seg", [False, True])
def test_freeze_then_train_with_discriminative_lrs(seg):
    sets = (["task=seg", "model=Unet", "encoder=resnet18", "img_size=32"] if seg else ["model=tiny_cnn"])
    cfg = load_config(None, [*sets, "freeze_epochs=1", "lr_groups.encoder=0.1", "lr=0.01", "scheduler=none"])
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    schedule = LrSchedule(optimizer, cfg, steps_per_epoch=2)
    lrs = {g["group"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"encoder": 0.0, "head": 0.01}
    encoder = encoder_parameters(model)
    head = [p for p in model.parameters() if all(p is not e for e in encoder)]
    enc0, head0 = [p.detach().clone() for p in encoder], [p.detach().clone() for p in head]
    _steps(model, optimizer, schedule, 2, seg)               # the frozen epoch
    assert all(torch.equal(a, b) for a, b in zip(enc0, encoder)), "the encoder moved while frozen"
    assert any(not torch.equal(a, b) for a, b in zip(head0, head)), "the head did not train"
    assert {g["group"]: g["lr"] for g in optimizer.param_groups} == {"encoder": pytest.approx(0.001),
                                                                     "head": 0.01}
    _steps(model, optimizer, schedule, 1, seg)
    assert any(not torch.equal(a, b) for a, b in zip(enc0, encoder)), "the encoder stayed frozen"


def test_default_keeps_the_two_old_groups():
    """Without lr_groups / freeze_epochs the optimizer has the two groups (decay, no decay) it always had, so
    a last.pt written before these keys still resumes."""
    cfg = load_config(None, ["model=tiny_cnn"])
    optimizer = build_optimizer(build_model(cfg), cfg)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg["weight_decay"], 0.0]


def test_a_model_without_encoder_refuses(monkeypatch):
    cfg = load_config(None, ["model=tiny_cnn", "freeze_epochs=2"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.raises(ParamGroupError, match="no encoder part"):
        build_optimizer(model, cfg)
