"""Optimizers by name (timm's optimizer factory) and one per-step learning-rate schedule with linear warm-up.

`build_optimizer` hands the kit's parameter groups (param_groups.py) to `timm.optim.create_optimizer_v2`, so
every name below is timm's optimizer of that name: adamw, adam, radam (torch.optim), sgd (SGD with Nesterov
momentum; classical SGD when momentum is 0), rmsprop (torch RMSprop, alpha 0.9, eps 1e-3), lion, lamb, lars,
nadamw, adan (timm's). `layer_decay` (e.g. 0.75) gives each layer of the network its own LR, times
layer_decay per layer below the top (timm's param_groups_layer_decay: BEiT / ViT fine-tuning), combined with
lr_groups and freeze_epochs.

`LrSchedule` sets the LR of every parameter group on each optimizer step:
  lr = base_lr * warmup(step) * shape(step) * plateau_scale
shape: cosine (to 1 % of base) | poly ((1 - t)^0.9 to zero, nnU-Net's schedule) | onecycle (from 1/25 up to
base, cosine down to 1e-4 of base; the rise is the warm-up, 30 % of training when warmup_epochs is 0) |
exponential (lr_gamma per step) | plateau (x plateau_factor after plateau_patience epochs without a better
validation metric) | none. Each group's LR is then times its `lr_mult` (config lr_groups) and its `lr_scale`
(layer_decay), and the encoder's is 0 for the first freeze_epochs (param_groups.py).
Its state is a few plain numbers, saved in every checkpoint, so a resumed run follows the same curve.
"""
from __future__ import annotations

import math

import torch

from strokekit.training.param_groups import GROUPS, core_model, param_groups, split_parameters

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lion", "lamb", "lars", "nadamw", "radam", "adan")
SCHEDULES = ("cosine", "poly", "onecycle", "plateau", "exponential", "none")


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """timm's optimizer `cfg["optimizer"]` over the kit's parameter groups: no weight decay on biases and norm
    layers; encoder and head groups (param_groups.py) for `lr_groups` and `freeze_epochs`; per-layer LR scales
    with `layer_decay`."""
    from timm.optim import create_optimizer_v2

    name = cfg["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    groups = layer_decay_groups(model, cfg) if cfg.get("layer_decay") else param_groups(model, cfg)
    options = {"eps": 1e-3} if name == "rmsprop" else {}
    if name == "sgd" and not cfg["momentum"]:
        name = "momentum"  # timm's sgd is Nesterov, which needs momentum: plain SGD without it
    return create_optimizer_v2(groups, opt=name, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                               momentum=cfg["momentum"], **options)


def layer_decay_groups(model: torch.nn.Module, cfg: dict) -> list[dict]:
    """timm's layer-wise LR decay groups (each with `lr_scale`) of the network under any wrapper, the wrappers'
    own heads at scale 1, each split again into encoder / head (`group`, `lr_mult`) as param_groups does."""
    from timm.optim import param_groups_layer_decay

    core, decay = core_model(model), cfg["weight_decay"]
    skip = core.no_weight_decay() if hasattr(core, "no_weight_decay") else ()
    groups = param_groups_layer_decay(core, weight_decay=decay, no_weight_decay_list=skip,
                                      layer_decay=cfg["layer_decay"])
    seen = {id(p) for group in groups for p in group["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    groups += [{"params": [p for p in rest if p.ndim > 1], "weight_decay": decay, "lr_scale": 1.0},
               {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": 1.0}]
    encoder = {id(p) for p in split_parameters(model)["encoder"]}
    mults = cfg.get("lr_groups") or {}
    out = []
    for group in groups:
        for name in GROUPS:
            params = [p for p in group["params"] if (id(p) in encoder) == (name == "encoder")]
            if params:
                out.append({**group, "params": params, "group": name, "lr_mult": float(mults.get(name, 1.0))})
    return out


class LrSchedule:
    """Per-step LR schedule (see module docstring); call `step()` after each optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int):
        if cfg["scheduler"] not in SCHEDULES:
            raise ValueError(f"unknown scheduler {cfg['scheduler']!r}; valid: {', '.join(SCHEDULES)}")
        self.optimizer, self.kind = optimizer, cfg["scheduler"]
        self.base_lr, self.gamma = cfg["lr"], cfg["lr_gamma"]
        self.total = max(1, steps_per_epoch * cfg["epochs"])
        warmup = cfg["warmup_epochs"]
        if self.kind == "onecycle" and not warmup:
            warmup = 0.3 * cfg["epochs"]
        self.warmup = min(self.total - 1, int(round(warmup * steps_per_epoch)))
        self.patience, self.factor = cfg["plateau_patience"], cfg["plateau_factor"]
        self.freeze_steps = int(round(cfg.get("freeze_epochs", 0) * steps_per_epoch))  # encoder at LR 0 until then
        self.mode = "max"
        self.step_count, self.scale, self.best, self.bad_epochs = 0, 1.0, None, 0
        self._apply()

    def factor_at(self, step: int) -> float:
        if step < self.warmup:
            start = 1 / 25 if self.kind == "onecycle" else 0.0
            return start + (1 - start) * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "poly":
            return (1 - t) ** 0.9
        if self.kind == "onecycle":
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "exponential":
            return self.gamma ** (step - self.warmup)
        return 1.0  # plateau, none

    def lr(self) -> float:
        return self.base_lr * self.factor_at(self.step_count) * self.scale

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:  # lr_groups multipliers; the encoder frozen at first
            frozen = group.get("group") == "encoder" and self.step_count < self.freeze_steps
            group["lr"] = 0.0 if frozen else lr * group.get("lr_mult", 1.0) * group.get("lr_scale", 1.0)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def epoch_end(self, metric: float, mode: str = "max") -> None:
        """Plateau bookkeeping on the validation metric (other schedules ignore it)."""
        if self.kind != "plateau" or metric is None or math.isnan(metric):
            return
        better = self.best is None or (metric > self.best if mode == "max" else metric < self.best)
        if better:
            self.best, self.bad_epochs = float(metric), 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0
                self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "scale": self.scale, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.scale = int(state["step_count"]), float(state["scale"])
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
        self._apply()
