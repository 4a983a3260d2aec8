"""Models by name: timm classifiers (stroke / type), smp segmentation nets (seg), and our own small ones.

`build_model(cfg)` reads `model` (a timm name, an smp architecture for seg, or a name registered here with
`@register_model`), `encoder` (smp), `in_chans`, `drop_rate`, `pretrained` and `weights`.
`load_checkpoint(path)` rebuilds a trained model from a strokekit checkpoint alone.

Head sizes: classifiers have 2 logits (softmax; P(positive) = softmax[:, 1] = sigmoid(z1 - z0)), so CE with
per-class weights, BCE and focal all work on one head; seg nets have 3 (background, ischemic, hemorrhagic).
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import nn

from strokekit.errors import UserError
from strokekit.models.weights import (WeightsError, apply_offline_policy, downloads_allowed, fit_state_dict,
                                      missing_weights_message, read_state_dict, smp_pretrained_file, strip_prefixes,
                                      timm_pretrained_file)
from strokekit.models.deep_supervision import DeepSupervision
from strokekit.models.norm import replace_batchnorm
from strokekit.models.sigmoid_head import SigmoidLesionHead
from strokekit.vocabulary import TASK_OUTPUTS

CUSTOM_MODELS: dict[str, Callable[[dict, int], nn.Module]] = {}
CUSTOM_KINDS: dict[str, str] = {}  # name -> "classifier" | "seg"


class ModelNameError(UserError, KeyError):
    """A model / architecture / encoder name that no registry knows."""


def register_model(name: str, kind: str = "classifier"):
    """Decorator: `@register_model("tiny_cnn") def f(cfg, num_outputs) -> nn.Module` makes `model: tiny_cnn` work.

    kind "classifier" returns (N, num_outputs) logits, kind "seg" returns (N, num_outputs, H, W).
    """
    def wrap(fn):
        CUSTOM_MODELS[name], CUSTOM_KINDS[name] = fn, kind
        return fn
    return wrap


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SequentialClassifier(nn.Sequential):
    """A plain layer stack split the way timm models are: forward_features (the last feature map, with
    `num_features` channels) then forward_head (pooling to logits), so aux_seg can hook a lesion head between."""

    def __init__(self, features: list[nn.Module], head: list[nn.Module], num_features: int):
        super().__init__(*features, *head)  # flat, so the state dict keys are those of one nn.Sequential
        self.split, self.num_features = len(features), num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[:self.split]:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[self.split:]:
            x = layer(x)
        return x


@register_model("tiny_cnn")
def tiny_cnn(cfg: dict, num_outputs: int) -> nn.Module:
    """Four conv blocks + global pooling: a seconds-fast classifier for tests and smoke runs."""
    widths = [cfg["in_chans"], 16, 32, 64, 128]
    layers = []
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [_conv_block(c_in, c_out), nn.MaxPool2d(2)]
    return SequentialClassifier(layers, [AvgMaxPool(), nn.Dropout(cfg["drop_rate"]),
                                         nn.Linear(2 * widths[-1], num_outputs)], widths[-1])


class AvgMaxPool(nn.Module):
    """Global average and max pooling side by side: the max keeps a small lesion's evidence undiluted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class TinyUNet(nn.Module):
    """A three-level U-Net with 16-64 channels: a seconds-fast segmentation net for tests."""

    def __init__(self, in_chans: int, classes: int, width: int = 16):
        super().__init__()
        w = [width, width * 2, width * 4]
        self.down = nn.ModuleList([_conv_block(in_chans, w[0]), _conv_block(w[0], w[1]), _conv_block(w[1], w[2])])
        self.up = nn.ModuleList([_conv_block(w[2] + w[1], w[1]), _conv_block(w[1] + w[0], w[0])])
        self.head = nn.Conv2d(w[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


@register_model("tiny_unet", kind="seg")
def tiny_unet(cfg: dict, num_outputs: int) -> nn.Module:
    return TinyUNet(cfg["in_chans"], num_outputs)


def head_size(task: str) -> int:
    if task not in TASK_OUTPUTS:
        raise ModelNameError(f"unknown task {task!r}; valid: {list(TASK_OUTPUTS)}")
    return TASK_OUTPUTS[task]


def build_model(cfg: dict, num_outputs: int | None = None) -> nn.Module:
    """The model a config names, with pretrained or local weights loaded (fails fast when offline)."""
    apply_offline_policy()
    num_outputs = num_outputs or head_size(cfg["task"])
    sigmoid = cfg["task"] == "seg" and cfg.get("seg_head") == "sigmoid"
    if sigmoid:
        num_outputs -= 1  # the net predicts the 2 lesion channels, SigmoidLesionHead adds the background's 0
    name = cfg["model"]
    if name in CUSTOM_MODELS:
        wanted = "seg" if cfg["task"] == "seg" else "classifier"
        if CUSTOM_KINDS[name] != wanted:
            fits = [n for n, k in CUSTOM_KINDS.items() if k == wanted]
            raise ModelNameError(f"model {name!r} is a {CUSTOM_KINDS[name]} model; task {cfg['task']} needs a "
                                 f"{wanted} (strokekit ones: {', '.join(fits)})")
        model = CUSTOM_MODELS[name](cfg, num_outputs)
        if cfg["pretrained"] and not cfg["weights"] and not getattr(model, "pretrained_loaded", False):
            raise WeightsError(f"model {name!r} is a strokekit model without pretrained weights: "
                               "set pretrained: false, or weights: PATH")
    elif cfg["task"] == "seg":
        model = _build_smp(cfg, num_outputs)
    else:
        model = _build_timm(cfg, num_outputs)
        if not cfg.get("pre_logits", True):
            drop_pre_logits(model, num_outputs, cfg.get("global_pool") or "avg")
    if cfg.get("head_hidden"):
        if cfg["task"] == "seg" or name in CUSTOM_MODELS:
            raise ModelNameError(f"head_hidden adds a layer to a timm classifier's head, not to {name}")
        add_hidden_layer(model, int(cfg["head_hidden"]), num_outputs)
    replace_batchnorm(model, cfg.get("norm") or "batch")
    if cfg["weights"] and not getattr(model, "_weights_loaded", False):
        fit_state_dict(model, read_state_dict(cfg["weights"]), source=str(cfg["weights"]))
    if cfg["task"] != "seg" and cfg["aux_seg"]:
        model = LesionAuxClassifier(model, cfg)
    if cfg["task"] == "seg" and cfg.get("deep_supervision"):
        model = DeepSupervision(model, cfg["in_chans"], num_outputs, depth=int(cfg["deep_supervision"]))
    if sigmoid:
        model = SigmoidLesionHead(model)  # logits [0, a, b]: read as a softmax head's (models/sigmoid_head.py)
    return model


class LesionAuxClassifier(nn.Module):
    """A classifier with a 1x1-conv lesion head on its last feature map (config `aux_seg`).

    The head learns which cells of that map hold ischemia / hemorrhage (channels 0 / 1), from the training
    masks: pixel-level supervision that tells the backbone where the evidence is, which an image label alone
    does not (small lesions among look-alikes). In training mode forward returns (image logits, lesion
    logits (N, 2, h, w)); in eval mode the image logits only, so inference, ensembling and export see a plain
    classifier.
    """

    def __init__(self, net: nn.Module, cfg: dict):
        super().__init__()
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise ModelNameError(f"aux_seg needs a model with forward_features / forward_head (timm models and "
                                 f"tiny_cnn / simple_cnn have them); {cfg['model']} has not")
        was_training = net.training
        with torch.no_grad():
            feats = net.eval().forward_features(torch.zeros(1, cfg["in_chans"], cfg["img_size"], cfg["img_size"]))
        net.train(was_training)
        if feats.ndim != 4:
            raise ModelNameError(f"aux_seg needs a convolutional feature map; {cfg['model']}'s forward_features "
                                 f"gives shape {tuple(feats.shape)}")
        self.net, self.lesion_head = net, nn.Conv2d(feats.shape[1], 2, 1)

    def forward(self, x: torch.Tensor):
        feats = self.net.forward_features(x)
        logits = self.net.forward_head(feats)
        return (logits, self.lesion_head(feats)) if self.training else logits


def _unknown_name(kind: str, name: str, valid: list[str], hint: str) -> ModelNameError:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    near = f" Close names: {', '.join(close)}." if close else ""
    return ModelNameError(f"unknown {kind} {name!r}.{near} {hint}")


def _build_timm(cfg: dict, num_outputs: int) -> nn.Module:
    import timm

    name = cfg["model"]
    if not timm.is_model(name):
        raise _unknown_name("model", name, list(CUSTOM_MODELS) + timm.list_models(),
                            f"strokekit models: {', '.join(CUSTOM_MODELS)}; any timm name also works "
                            "(list them with python -c \"import timm; print(timm.list_models('*resnet*'))\").")
    kwargs = dict(num_classes=num_outputs, in_chans=cfg["in_chans"], drop_rate=cfg["drop_rate"])
    if cfg.get("global_pool"):
        kwargs["global_pool"] = cfg["global_pool"]
    weights, overlay = cfg["weights"], None
    if weights and not _is_strokekit_checkpoint(weights):
        overlay = dict(file=str(weights))  # timm adapts the head and in_chans itself
    elif cfg["pretrained"] and not weights:
        path, source = timm_pretrained_file(name)
        if path is None and not downloads_allowed():
            raise WeightsError(missing_weights_message(f"timm model {name}", source))
        overlay = dict(file=path) if path else None
    if overlay is None and not (cfg["pretrained"] and not weights):
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise WeightsError(f"{name}: loading weights from {overlay or 'the hub'} failed: {err}") from None
    model._weights_loaded = True
    return model


def drop_pre_logits(model: nn.Module, num_outputs: int, pool: str) -> None:
    """Config pre_logits: false: the timm model's pre-logits block (VGG's fc6 / fc7 as a 7x7 and a 1x1 conv,
    ~120 M parameters) is removed and the output layer sized for the last convolution's channels, pooled by
    `pool` -- the VGG16 paper's "fully connected layers removed, one layer with as many neurons as classes"."""
    block = getattr(model, "pre_logits", None)
    if block is None or isinstance(block, nn.Identity) or not hasattr(model, "prune_intermediate_layers"):
        raise ModelNameError(f"pre_logits: false removes a timm classifier's pre-logits block (VGG's fc6 / fc7); "
                             f"{type(model).__name__} has none")
    model.prune_intermediate_layers(prune_head=True)   # timm: the block goes, the head takes the features
    model.reset_classifier(num_outputs, pool)


def add_hidden_layer(model: nn.Module, width: int, num_outputs: int) -> None:
    """Config head_hidden: a timm classifier's output layer becomes Linear(features, width) -> ReLU ->
    Linear(width, outputs), after timm's pooling and dropout (the multi-task paper's GAP -> Dropout ->
    Dense(128, relu) -> output head)."""
    old = model.get_classifier()
    where = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not isinstance(old, nn.Linear) or not where:
        raise ModelNameError(f"head_hidden: {type(model).__name__}'s classifier is not one linear layer")
    parent, _, attr = where.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr,
            nn.Sequential(nn.Linear(old.in_features, width), nn.ReLU(inplace=True), nn.Linear(width, num_outputs)))


def _build_smp(cfg: dict, num_outputs: int) -> nn.Module:
    import segmentation_models_pytorch as smp
    import timm

    arch, encoder = cfg["model"], cfg["encoder"]
    archs = list(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in archs:
        raise _unknown_name("seg architecture", arch, archs + list(CUSTOM_MODELS),
                            f"For seg, `model` names the architecture and `encoder` the backbone. smp architectures: "
                            f"{', '.join(archs)}; strokekit models: {', '.join(CUSTOM_MODELS)}.")
    names = smp.encoders.get_encoder_names()
    if encoder not in names and not (encoder.startswith("tu-") and timm.is_model(encoder[3:])):
        raise _unknown_name("smp encoder", encoder, names, "Or `tu-<timm name>` for any timm backbone.")
    encoder_weights = None
    if cfg["pretrained"] and not cfg["weights"]:
        path, source = smp_pretrained_file(encoder)
        if path is None and not downloads_allowed():
            raise WeightsError(missing_weights_message(f"smp encoder {encoder}", source))
        encoder_weights = True if encoder.startswith("tu-") else "imagenet"
    options = {"decoder_attention_type": cfg["decoder_attention"]} if cfg["decoder_attention"] else {}
    if options and arch.lower() not in ("unet", "unetplusplus"):
        raise ModelNameError(f"decoder_attention works with Unet and UnetPlusPlus, not {arch}")
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights,
                             in_channels=cfg["in_chans"], classes=num_outputs, **options)
    if cfg["drop_rate"]:  # spatial dropout: whole decoder channels dropped before the head
        model.segmentation_head = nn.Sequential(nn.Dropout2d(cfg["drop_rate"]), *model.segmentation_head)
    return model


def smp_encoder(cfg: dict, model: str) -> nn.Module:
    """The smp encoder (depth 5) a config names for the kit's own U-Nets (`model`), with its ImageNet weights
    when `pretrained` and no `weights` (offline: from the local cache, else a clear WeightsError); the module's
    `pretrained_loaded` says whether they came."""
    import segmentation_models_pytorch as smp

    name, weights = cfg["encoder"], None
    if name not in smp.encoders.get_encoder_names():
        raise ModelNameError(f"{model}: unknown smp encoder {name!r} (e.g. resnet34, dpn68, efficientnet-b3)")
    if cfg["pretrained"] and not cfg["weights"]:
        path, source = smp_pretrained_file(name)
        if path is None and not downloads_allowed():
            raise WeightsError(missing_weights_message(f"smp encoder {name}", source))
        weights = "imagenet"
    encoder = smp.encoders.get_encoder(name, in_channels=cfg["in_chans"], depth=5, weights=weights)
    encoder.pretrained_loaded = weights is not None
    return encoder


def _is_strokekit_checkpoint(path) -> bool:
    try:
        from strokekit.models.checkpoint import read_checkpoint
        read_checkpoint(path)
        return True
    except Exception:  # noqa: BLE001 - anything else is a plain weights file, judged by its loader
        return False


def load_checkpoint(path, device: str | torch.device = "cpu", use_ema: bool = True) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, its config) from a strokekit checkpoint; EMA weights when present."""
    from strokekit.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    cfg = dict(ckpt["config"], pretrained=False, weights=None)
    model = build_model(cfg, num_outputs=ckpt["num_outputs"])
    state = ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"]
    try:
        model.load_state_dict(strip_prefixes(state))
    except RuntimeError as err:
        raise WeightsError(f"{path}: weights do not fit {cfg['model']} as its config describes (in_chans="
                           f"{cfg['in_chans']}, {ckpt['num_outputs']} outputs): {err}") from None
    return model.to(device).eval(), ckpt["config"]

