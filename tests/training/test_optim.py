"""Optimizers through timm's factory (training/optim.py): the kit's old names build the same optimizers as
before (same updates, step for step, and a last.pt's optimizer state still loads), the new ones (lion, lamb,
...) train, and layer_decay gives each layer its LR scale, which LrSchedule applies with lr_groups and
freeze_epochs."""
import pytest
import torch

from strokekit.config import ConfigError, load_config
from strokekit.models.registry import build_model
from strokekit.training.optim import OPTIMIZERS, LrSchedule, build_optimizer
from strokekit.training.param_groups import param_groups

pytestmark = pytest.mark.usefixtures("one_thread")

BEFORE = {  # what optim.py built before timm's factory, for the three names it knew
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg["lr"]),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"],
                                               nesterov=cfg["momentum"] > 0),
    "rmsprop": lambda groups, cfg: torch.optim.RMSprop(groups, lr=cfg["lr"], momentum=cfg["momentum"], alpha=0.9,
                                                       eps=1e-3),
}


def train_steps(model, optimizer, n=3, seed=0):
    torch.manual_seed(seed)
    for _ in range(n):
        out = model(torch.randn(4, 3, 32, 32))
        loss = out.logsumexp(1).mean() - out[:, 1].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


@pytest.mark.parametrize("name,momentum", [("adamw", 0.9), ("sgd", 0.9), ("sgd", 0.0), ("rmsprop", 0.9)])
def test_the_old_names_update_as_before(name, momentum):
    cfg = load_config(None, ["model=tiny_cnn", "img_size=32", f"optimizer={name}", f"momentum={momentum}",
                             "lr=0.01", "weight_decay=0.05"])
    torch.manual_seed(0)
    ours = build_model(cfg)
    theirs = build_model(cfg)
    theirs.load_state_dict(ours.state_dict())
    opt_ours, opt_before = build_optimizer(ours, cfg), BEFORE[name](param_groups(theirs, cfg), cfg)
    assert type(opt_ours) is type(opt_before)
    train_steps(ours, opt_ours)
    train_steps(theirs, opt_before)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    opt_ours.load_state_dict(opt_before.state_dict())  # a last.pt written before still resumes


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains(name):
    cfg = load_config(None, ["model=tiny_cnn", "img_size=32", f"optimizer={name}", "lr=0.003", "scheduler=none"])
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    first = train_steps(model, optimizer, n=1)
    assert train_steps(model, optimizer, n=6) < first, f"{name}: the loss did not go down"


def test_layer_decay_scales_each_layer_and_composes_with_lr_groups():
    cfg = load_config(None, ["model=resnet18", "img_size=32", "layer_decay=0.5", "lr=0.1", "scheduler=none",
                             "freeze_epochs=1", "lr_groups.head=2"])
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    groups = optimizer.param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) > 3 and scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (len(scales) - 1))
    head = {id(p) for p in model.get_classifier().parameters()}
    assert all(g["lr_scale"] == 1.0 and g["group"] == "head" for g in groups if id(g["params"][0]) in head)
    schedule = LrSchedule(optimizer, cfg, steps_per_epoch=1)
    for g in groups:  # frozen encoder at 0, the head at lr x 2, after the frozen epoch each layer at its scale
        assert g["lr"] == (0.0 if g["group"] == "encoder" else pytest.approx(0.2 * g["lr_scale"]))
    schedule.step()
    assert {round(g["lr"] / g["lr_scale"] / g["lr_mult"], 9) for g in groups} == {0.1}


def test_layer_decay_keeps_a_wrappers_own_heads():
    cfg = load_config(None, ["model=resnet18", "img_size=64", "aux_seg=0.5", "layer_decay=0.8"])
    model = build_model(cfg)
    groups = build_optimizer(model, cfg).param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    lesion = {id(p) for p in model.lesion_head.parameters()}
    assert all(g["lr_scale"] == 1.0 for g in groups if lesion & {id(p) for p in g["params"]})


@pytest.mark.parametrize("change,message", [("optimizer=adamm", "optimizer"), ("layer_decay=0", "layer_decay"),
                                            ("layer_decay=1.5", "layer_decay")])
def test_bad_optimizer_settings_are_refused_when_read(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [change])
