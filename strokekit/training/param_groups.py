"""Parameter groups: the encoder (the pretrained part) and the head (all the rest), for per-group learning
rates (config `lr_groups`, multipliers of `lr`) and a frozen start (`freeze_epochs`: the encoder's LR is 0
for that many epochs, then it trains; optim.LrSchedule applies both at every step).

encoder = smp U-Nets' and hypercolumn_unet's `.encoder`; a timm classifier's everything but its classifier
layer (`get_classifier()`); tiny_cnn / simple_cnn's feature layers. head = the rest: decoder, segmentation
head, classifier, the aux_seg and deep-supervision heads. Each group is split again into weights (decayed)
and biases / norm parameters (no weight decay), so the optimizer sees up to four groups, each tagged with its
`group` name and `lr_mult`.
"""
from __future__ import annotations

from torch import nn

from strokekit.errors import UserError

GROUPS = ("encoder", "head")


class ParamGroupError(UserError, ValueError):
    """freeze_epochs / lr_groups.encoder asked of a model that has no encoder part."""


def core_model(model: nn.Module) -> nn.Module:
    """The network under the wrappers (DistributedDataParallel's .module, aux_seg's and deep supervision's .net)."""
    while True:
        inner = next((m for m in (getattr(model, "module", None), getattr(model, "net", None))
                      if isinstance(m, nn.Module)), None)
        if inner is None:
            return model
        model = inner


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The encoder's parameters (see module docstring); [] for a model with no such part."""
    core = core_model(model)
    encoder = getattr(core, "encoder", None)
    if isinstance(encoder, nn.Module):
        return list(encoder.parameters())
    if hasattr(core, "forward_features") and hasattr(core, "split"):  # registry.SequentialClassifier
        return [p for layer in list(core)[:core.split] for p in layer.parameters()]
    if hasattr(core, "get_classifier"):  # timm
        head = {id(p) for p in core.get_classifier().parameters()}
        return [p for p in core.parameters() if id(p) not in head]
    return []


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{"encoder": [...], "head": [...]}, trainable parameters only, every one in exactly one group."""
    encoder = {id(p) for p in encoder_parameters(model)}
    out = {name: [] for name in GROUPS}
    for param in model.parameters():
        if param.requires_grad:
            out["encoder" if id(param) in encoder else "head"].append(param)
    return out


def param_groups(model: nn.Module, cfg: dict) -> list[dict]:
    """Optimizer parameter groups: per (encoder | head) x (decayed weights | biases and norms), non-empty ones,
    each with `group`, `lr_mult` (cfg lr_groups) and its weight decay. Raises ParamGroupError when freeze_epochs
    or an encoder multiplier other than 1 is asked of a model without an encoder part."""
    mults = cfg.get("lr_groups") or {}
    if not cfg.get("freeze_epochs") and all(float(m) == 1.0 for m in mults.values()):
        # one group (as before these keys), so a last.pt written without them still resumes
        split = {"all": [p for p in model.parameters() if p.requires_grad]}
    else:
        split = split_parameters(model)
    if "encoder" in split and not split["encoder"] and (cfg.get("freeze_epochs") or
                                                        float(mults.get("encoder", 1.0)) != 1.0):
        raise ParamGroupError(f"freeze_epochs / lr_groups.encoder: model {cfg['model']} has no encoder part to "
                              "freeze or slow down (smp U-Nets, hypercolumn_unet, timm classifiers, tiny_cnn "
                              "and simple_cnn have one)")
    groups = []
    for name, params in split.items():
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for chunk, wd in ((decay, cfg["weight_decay"]), (no_decay, 0.0)):
            if chunk or name == "all":  # "all": both groups, even empty, as before
                groups.append({"params": chunk, "weight_decay": wd, "group": name,
                               "lr_mult": float(mults.get(name, 1.0))})
    return groups
