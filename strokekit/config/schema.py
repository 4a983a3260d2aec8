"""Every config key's type and allowed values or range, and the rules that tie keys together.

`SCHEMA` mirrors `DEFAULTS` key by key (dotted for nested ones: `aug.hflip`). Each rule checks one value and
returns it in canonical form (ints promoted to floats where a float is meant, "3e-4" read as a number); a bad
value raises `BadValue` with the problem, which config/__init__ turns into `<key>: <problem>`. `cross_checks`
holds the rules that need several keys (a task's metrics and samplers, class weights per head size ...).

Torch-free: the names of losses, optimizers, schedules, samplers and metrics are declared here, and
tests/test_config.py checks that they equal the training registries (training/losses.LOSSES, training/optim,
training/tasks). Model and encoder names come from timm / smp and are checked when the model is built.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strokekit.vocabulary import FLIPS, LESION_NAMES, SCALE_RANGE, TASK_OUTPUTS, TASKS, resolve_scales

# ---- names the training code registers (tests/test_config.py keeps them equal) ----
LOSSES = ("ce", "bce", "focal", "dice", "lovasz", "batch_dice", "image_dice")  # training/losses.LOSSES
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lion", "lamb", "lars", "nadamw", "radam", "adan")  # training/optim
SCHEDULES = ("cosine", "poly", "onecycle", "plateau", "exponential", "none")  # training/optim.SCHEDULES
SAMPLERS = {"stroke": ("balanced",), "type": ("balanced",), "seg": ("lesion",)}  # training/tasks Task.samplers
CLASSIFIER_METRICS = ("auc", "recall", "precision", "f1", "specificity", "balanced_accuracy", "accuracy")
SEG_SCORES = tuple(f"{metric}_{reduction}_{part}" for metric in ("iou", "dice")
                   for reduction in ("micro", "macro_imagewise", "patientwise")
                   for part in (*LESION_NAMES, "lesion_mean", "any_lesion"))
AMP = ("bf16", "fp16", "none")
TRACKERS = ("tensorboard", "wandb", "mlflow")                      # training/tracking.TRACKERS
DECODER_ATTENTION = ("scse",)   # smp Unet / UnetPlusPlus


def metric_names(cfg: dict) -> tuple[str, ...]:
    """The validation metrics a fold of this config logs (training/tasks.py `finish`, plus val_loss)."""
    if cfg["task"] != "seg":
        names = ["auc", "threshold_best_f1", *(f"{k}_{at}" for at in ("at_05", "at_best")
                                               for k in CLASSIFIER_METRICS if k != "auc")]
        return ("val_loss", *names)
    names = list(SEG_SCORES)
    if cfg["seg_val_negatives"]:
        names.append("negatives_with_lesion_pred")
    if cfg["select_postprocess"] is not None:
        names += [f"pp_{name}" for name in names] + ["pp_official_iou", "pp_official_dice"]
    return ("val_loss", *names)


class BadValue(ValueError):
    """One value breaks its key's rule; the message says what is allowed."""


@dataclass(frozen=True)
class Rule:
    """A key's type and allowed values: `check(value)` returns the canonical value or raises BadValue."""
    allowed: str                         # for messages: "a number > 0", "one of fail, skip" ...
    convert: Callable[[Any], Any]        # canonical value; raises (ValueError, TypeError) when not allowed
    nullable: bool = False

    def check(self, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        try:
            return self.convert(value)
        except (ValueError, TypeError):
            raise BadValue(f"must be {self.describe()}, got {value!r}") from None

    def describe(self) -> str:
        return f"{self.allowed} or null" if self.nullable else self.allowed


def _bound(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else ""


def _in_range(x, lo, hi, lo_open, hi_open):
    if (lo is not None and (x < lo or (lo_open and x == lo))) or \
            (hi is not None and (x > hi or (hi_open and x == hi))):
        raise ValueError
    return x


def Int(lo=None, hi=None, nullable=False) -> Rule:
    def convert(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return _in_range(value, lo, hi, False, False)
    return Rule(f"a whole number {_bound(lo, hi, False, False)}".strip(), convert, nullable)


def Float(lo=None, hi=None, lo_open=False, hi_open=False, nullable=False, keep_int=False) -> Rule:
    """A finite number (ints become floats unless keep_int); "3e-4" (YAML 1.1 reads it as text) is read too."""
    def convert(value):
        if isinstance(value, str):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError
        return _in_range(value if keep_int and isinstance(value, int) else float(value), lo, hi, lo_open, hi_open)
    return Rule(f"a finite number {_bound(lo, hi, lo_open, hi_open)}".strip(), convert, nullable)


def Prob() -> Rule:
    return Float(0.0, 1.0)


def Bool() -> Rule:
    def convert(value):
        if not isinstance(value, bool):
            raise TypeError
        return value
    return Rule("true or false", convert)


def Text(nullable=False) -> Rule:
    def convert(value):
        if not isinstance(value, str) or not value.strip():
            raise TypeError
        return value
    return Rule("a non-empty string", convert, nullable)


def Choice(*choices, nullable=False) -> Rule:
    def convert(value):
        if not isinstance(value, str) or value not in choices:
            raise ValueError
        return value
    return Rule(f"one of {', '.join(choices)}", convert, nullable)


def _windows(value):
    if not isinstance(value, list) or not value:
        raise TypeError
    out = []
    for window in value:
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise TypeError
        center, width = (Float().convert(v) for v in window)
        if width <= 0:
            raise ValueError
        out.append([window[0], window[1]])
    return out


def loss_terms(spec) -> dict[str, float]:
    """"dice+ce" -> {dice: 1, ce: 1}; "0.5*dice+ce" -> {dice: 0.5, ce: 1}; a mapping {name: weight} as is."""
    if isinstance(spec, dict):
        terms = {str(k).strip(): Float(0.0).convert(v) for k, v in spec.items()}
    elif isinstance(spec, str):
        terms = {}
        for part in spec.split("+"):
            weight, star, name = part.strip().rpartition("*")
            terms[name.strip()] = Float(0.0).convert(weight) if star else 1.0
    else:
        raise TypeError
    if not terms or any(name not in LOSSES for name in terms) or not any(terms.values()):
        raise ValueError
    return terms


def _loss(value):
    loss_terms(value)
    return value


def _class_weights(value):
    if value == "balanced":
        return value
    if not isinstance(value, list) or not value:
        raise TypeError
    return [Float(0.0).convert(w) for w in value]


def _select_postprocess(value):
    if not isinstance(value, (str, dict)) or (isinstance(value, str) and not value.strip()):
        raise TypeError
    return value


def _hu_range(value):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError
    low, high = (Float().convert(v) for v in value)
    if not low < high:
        raise ValueError
    return [low, high]


def _trackers(value):
    names = value.split(",") if isinstance(value, str) else [] if value is None else value
    if not isinstance(names, (list, tuple)) or any(not isinstance(v, str) or v.strip() not in TRACKERS
                                                   for v in names):
        raise ValueError
    return list(dict.fromkeys(v.strip() for v in names))


def _per_channel(value, positive: bool):
    """mean / std: a number, or a list of numbers (one per channel); std's must be > 0."""
    rule = Float(0.0, lo_open=True) if positive else Float()
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError
        return [rule.convert(v) for v in value]
    return rule.convert(value)


def _flips(value):
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or any(v not in FLIPS for v in names):
        raise ValueError
    return list(dict.fromkeys(names))


SCHEMA: dict[str, Rule] = {
    "name": Text(nullable=True),
    "task": Choice(*TASKS),
    "data": Text(),
    "folds": Text(nullable=True),
    "runs_dir": Text(),
    "on_bad_input": Choice("fail", "skip"),
    "log": Rule(f"a list of experiment trackers from {', '.join(TRACKERS)} (or [])", _trackers),
    "image_source": Choice("png", "dicom"),
    "windows": Rule("a list of [center, width] pairs with width > 0", _windows),
    "hu_range": Rule("[low, high] Hounsfield units, finite, low < high", _hu_range),
    "in_chans": Int(1, 16),
    "neighbours": Int(0, 3),
    "img_size": Int(32, 4096),
    "mean": Rule("a finite number or a list of them (one per channel)", lambda v: _per_channel(v, positive=False)),
    "std": Rule("a finite number > 0 or a list of them (one per channel)", lambda v: _per_channel(v, positive=True)),
    "overlay_method": Choice("exact", "hsv"),
    "equalize": Choice("hist", "clahe", nullable=True),                # data/equalize.EQUALIZE
    "model": Text(),
    "encoder": Text(),
    "pretrained": Bool(),
    "weights": Text(nullable=True),
    "aux_seg": Float(0.0),
    "drop_rate": Float(0.0, 1.0, hi_open=True),
    "global_pool": Choice("avg", "max", "avgmax", "catavgmax", nullable=True),   # timm's SelectAdaptivePool2d
    "pre_logits": Bool(),
    "head_hidden": Int(1, nullable=True),
    "decoder_attention": Choice(*DECODER_ATTENTION, nullable=True),
    "decoder_upsample": Choice("nearest", "pixel_shuffle", "transpose"),  # models/kit_unet.UPSAMPLE
    "decoder_block": Choice("plain", "residual"),                      # models/kit_unet.BLOCKS
    "decoder_self_attention": Bool(),
    "norm": Choice("batch", "instance", "group"),                      # models/norm.NORMS
    "deep_supervision": Int(0, 5),
    "seg_head": Choice("softmax", "sigmoid"),
    "epochs": Int(1),
    "batch_size": Int(1),
    "accum_steps": Int(1),
    "optimizer": Choice(*OPTIMIZERS),
    "lr": Float(0.0, lo_open=True),
    "weight_decay": Float(0.0),
    "momentum": Float(0.0, 1.0, hi_open=True),
    "layer_decay": Float(0.0, 1.0, lo_open=True, nullable=True),
    "scheduler": Choice(*SCHEDULES),
    "warmup_epochs": Float(0.0),
    "freeze_epochs": Float(0.0, keep_int=True),
    "lr_groups.encoder": Float(0.0),
    "lr_groups.head": Float(0.0),
    "lr_gamma": Float(0.0, 1.0, lo_open=True),
    "plateau_patience": Int(0),
    "plateau_factor": Float(0.0, 1.0, lo_open=True),
    "clip_grad": Float(0.0, lo_open=True, nullable=True),
    "loss": Rule(f"a loss name ({', '.join(LOSSES)}), a sum such as 'dice+ce' or '0.5*dice+ce', or a mapping "
                 "such as {dice: 1.0, ce: 0.5} (weights >= 0, one > 0)", _loss, nullable=True),
    "class_weights": Rule("balanced or a list of per-class weights >= 0 such as [1.0, 2.0]", _class_weights,
                          nullable=True),
    "sampler": Choice("none", *sorted({s for names in SAMPLERS.values() for s in names}), nullable=True),
    "lesion_share": Prob(),
    "lesion_rest": Choice("clear", "all"),
    "epoch_steps": Int(1, nullable=True),
    "crop_size": Int(32, 4096, nullable=True),
    "fg_crop_share": Prob(),
    "mixup": Float(0.0),
    "cutmix": Float(0.0),
    "mix_prob": Prob(),
    "seg_negatives": Prob(),
    "seg_val_negatives": Bool(),
    "seg_lesion_type": Choice(*LESION_NAMES, nullable=True),
    "pseudo": Text(nullable=True),
    "amp": Choice(*AMP, nullable=True),  # null: as none (training/engine autocast)
    "channels_last": Bool(),
    "ema": Bool(),
    "ema_decay": Float(0.0, 1.0, hi_open=True),
    "early_stop": Int(1, nullable=True),
    "metric": Text(nullable=True),   # which names: cross_checks (they depend on the task)
    "select_postprocess": Rule("a post-processing mapping such as {min_area: 20} or an ensemble spec file",
                               _select_postprocess, nullable=True),
    "topk_average": Int(1, nullable=True),
    "seed": Int(0, 2**32 - 1),
    "num_workers": Int(0, 256),
    "sync_bn": Bool(),
    "ddp_backend": Choice("nccl", "gloo", nullable=True),
    "cache": Bool(),
    "cache_dir": Text(nullable=True),
    "oof_size": Int(8, 4096),
    "oof_tta": Rule(f"a list of TTA flips from {', '.join(FLIPS)}", _flips),
    "oof_tta_scales": Rule(f"a list of TTA scales, factors of img_size in {SCALE_RANGE[0]}-{SCALE_RANGE[1]}",
                           resolve_scales),
    "aug.hflip": Prob(),
    "aug.vflip": Prob(),
    "aug.shift_scale_rotate": Prob(),
    "aug.rotate_limit": Float(0.0, 180.0, keep_int=True),
    "aug.scale_limit": Float(0.0, 1.0, hi_open=True),
    "aug.shift_limit": Float(0.0, 1.0),
    "aug.brightness_contrast": Prob(),
    "aug.elastic": Prob(),
    "aug.rot90": Prob(),
    "aug.gamma": Prob(),
    "aug.low_res": Prob(),
    "aug.grid_distortion": Prob(),
    "aug.clahe": Prob(),
    "aug.noise": Prob(),
    "aug.blur": Prob(),
    "aug.coarse_dropout": Prob(),
    "aug.roi_crop": Prob(),
    "aug.window_shift": Float(0.0, 500.0),
    "aug.window_scale": Float(0.0, 1.0, hi_open=True),
}


def check_value(key: str, value: Any) -> Any:
    """`value` in canonical form if `key` (dotted) allows it; BadValue naming what is allowed otherwise."""
    return SCHEMA[key].check(value)


def cross_checks(cfg: dict) -> list[tuple[str, str]]:
    """(key, problem) for each rule between keys that the config breaks."""
    problems = []
    task = cfg["task"]
    n_windows = len(cfg["windows"]) if cfg["image_source"] == "dicom" else 1
    slices = 2 * cfg["neighbours"] + 1
    if slices > 1 and cfg["in_chans"] != n_windows * slices:
        problems.append(("in_chans", f"{cfg['in_chans']}: neighbours={cfg['neighbours']} feeds {slices} slices of "
                                     f"{n_windows} channel(s) each, so in_chans must be {n_windows * slices}"))
    elif slices == 1 and n_windows not in (1, cfg["in_chans"]):
        problems.append(("windows", f"{n_windows} windows cannot fill in_chans={cfg['in_chans']}: give one window "
                                    "(repeated) or exactly in_chans windows"))
    if task == "seg" and cfg["img_size"] % 32:
        problems.append(("img_size", f"{cfg['img_size']} must be a multiple of 32 for U-Net encoders "
                                     f"(try {max(32, round(cfg['img_size'] / 32) * 32)})"))
    if cfg["sampler"] not in (None, "none", *SAMPLERS[task]):
        problems.append(("sampler", f"{cfg['sampler']!r} does not fit task {task}; allowed: "
                                    f"{', '.join(SAMPLERS[task])}, none or null"))
    weights = cfg["class_weights"]
    if weights == "balanced" and task == "seg":
        problems.append(("class_weights", "balanced is for the classifiers; give seg three weights, e.g. [1, 5, 5]"))
    elif isinstance(weights, list) and len(weights) != TASK_OUTPUTS[task]:
        problems.append(("class_weights", f"task {task} has {TASK_OUTPUTS[task]} classes, got {len(weights)} "
                                          f"weights {weights}"))
    crop = cfg["crop_size"]
    if crop is not None and (task != "seg" or crop % 32 or crop > cfg["img_size"]):
        problems.append(("crop_size", f"{crop}: seg only, a multiple of 32, at most img_size={cfg['img_size']}"))
    aug = cfg["aug"]
    if (aug["window_shift"] > 0 or aug["window_scale"] > 0) and cfg["image_source"] != "dicom":
        problems.append(("aug.window_shift" if aug["window_shift"] > 0 else "aug.window_scale",
                         "HU-window jitter moves DICOM windows; it needs image_source: dicom (a PNG has no HU)"))
    if task == "seg" and cfg["mixup"] > 0 and cfg["mix_prob"] > 0:
        problems.append(("mixup", "blends labels, and a seg mask has no blended form; use cutmix for seg (the "
                                  "pasted box carries its mask)"))
    for key in ("mean", "std"):
        if isinstance(cfg[key], list) and len(cfg[key]) not in (1, cfg["in_chans"]):
            problems.append((key, f"{len(cfg[key])} values for in_chans={cfg['in_chans']}: give one number or "
                                  f"one per channel"))
    if cfg["epoch_steps"] is not None and cfg["sampler"] in (None, "none"):
        problems.append(("epoch_steps", "needs a sampler that draws batches with replacement (balanced for "
                                        "classifiers, lesion for seg)"))
    if cfg["seg_head"] == "sigmoid":
        softmax_only = [name for name in loss_terms(cfg["loss"]) if name in ("ce", "lovasz")] if cfg["loss"] else []
        if task != "seg":
            problems.append(("seg_head", f"sigmoid is a seg head, not one for task {task}"))
        elif softmax_only:
            problems.append(("loss", f"{', '.join(softmax_only)} is for the softmax head (exclusive classes); "
                                     "seg_head: sigmoid trains with bce, focal, dice, batch_dice or image_dice"))
    kit_only = [k for k, plain in (("decoder_upsample", "nearest"), ("decoder_block", "plain"),
                                   ("decoder_self_attention", False)) if cfg[k] != plain]
    if kit_only and (task != "seg" or cfg["model"] != "kit_unet"):
        problems.append((kit_only[0], f"shapes kit_unet's decoder (model: kit_unet, task seg); model "
                                      f"{cfg['model']} has its own"))
    if cfg["global_pool"] is not None and (task == "seg" or cfg["model"] in ("tiny_cnn", "simple_cnn")):
        problems.append(("global_pool", f"chooses a timm classifier's pooling; {cfg['model']} (task {task}) has "
                                        "its own"))
    if not cfg["pre_logits"] and (task == "seg" or cfg["model"] in ("tiny_cnn", "simple_cnn")):
        problems.append(("pre_logits", f"drops a timm classifier's pre-logits block; {cfg['model']} (task {task}) "
                                       "has none"))
    if cfg["deep_supervision"] and task != "seg":
        problems.append(("deep_supervision", f"is for seg U-Nets, not task {task}"))
    if cfg["pseudo"] and task != "seg":
        problems.append(("pseudo", f"pseudo-labels are masks (pseudo.py): seg only, not task {task}"))
    if cfg["metric"] is not None and cfg["metric"] not in metric_names(cfg):
        problems.append(("metric", f"{cfg['metric']!r} is not logged for task {task} with this config; allowed: "
                                   f"{', '.join(metric_names(cfg))} (or null for the task's default)"))
    return problems
