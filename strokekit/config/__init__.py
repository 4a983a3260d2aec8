"""One config object: defaults in code < config YAML < `--set key=value` overrides; unknown keys fail.

Configs are nested dicts of plain Python types (so they store safely in checkpoints and YAML). Dotted
keys address nested values: `--set lr=3e-4 aug.hflip=0.0 epochs=5`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from strokekit.atomic import write_text_atomic
from strokekit.config.postprocess import normalise_spec
from strokekit.config.schema import SCHEMA, BadValue, check_value, cross_checks
from strokekit.errors import UserError

# Every key a config may hold, with its default. A config file only lists what it changes.
DEFAULTS: dict[str, Any] = {
    "name": None,              # run name; defaults to the config file's stem
    "task": "stroke",          # stroke (phase 1, binary) | type (ischemic vs hemorrhagic) | seg (phase 2)
    "data": "data/phantom",    # data set root (competition or public-release layout)
    "folds": None,             # folds CSV written by kfold.py; None = <data>/folds.csv
    "runs_dir": "runs",        # runs/<name>/fold<k>/
    "on_bad_input": "fail",    # fail: a bad data file stops the run before training | skip: leave it out (skipped.csv)
    "log": [],                 # experiment trackers, e.g. [tensorboard]: tensorboard | wandb | mlflow, offline
                               # (train.py --log; training/tracking.py)
    # input
    "image_source": "png",     # png | dicom
    "windows": [[40, 80]],     # DICOM HU windows [center, width], one channel each (brain 40/80, subdural 80/200, stroke 32/8)
    "hu_range": [-3100, 5000],  # DICOM: a slice with a pixel outside [low, high] HU is bad input (damaged rescale tags)
    "in_chans": 3,             # channels fed to the model; grey PNG / a single window is repeated to fill them
    "neighbours": 0,           # 2.5D: also feed the k slices either side in the DICOM series (data/neighbours.py);
                               # in_chans = channels per slice (windows, or 1 for PNG) x (2k + 1)
    "img_size": 256,
    "mean": 0.5,               # normalisation of the [0,1] image: (x - mean) / std; a number or one per channel,
    "std": 0.25,               # e.g. ImageNet's [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]
    "equalize": None,          # null | hist | clahe: each input channel equalised at training, OOF and inference alike
                               # (the VGG16 paper's histogram equalisation; data/equalize.py); aug.clahe is random
    "overlay_method": "exact",  # training masks from an OVERLAY (when no MASK): exact (contour colours, lossless)
                               # | hsv (the multi-task paper's red-hue rule, the class from the image's folder)
    # model
    "model": "resnet18",       # timm name for stroke/type; smp architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus ...) for seg
    "encoder": "resnet34",     # smp encoder name (seg only); `tu-<timm name>` for any timm backbone
    "pretrained": False,       # ImageNet weights through timm/smp: needs the hub or a local cache
    "weights": None,           # path to a local state dict / checkpoint to start from
    "aux_seg": 0.0,            # stroke/type: weight of an auxiliary loss on where the lesions are (from the masks),
                               # a 1x1-conv head on the last feature map; 0 = off. Inference is unchanged
    "drop_rate": 0.0,          # classifiers: dropout before the head; seg: spatial dropout (Dropout2d) before it
    "global_pool": None,       # timm classifiers: the pooling before the head, avg | max | avgmax | catavgmax
                               # (timm's); None = the model's own (most: avg)
    "pre_logits": True,        # timm classifiers: False drops the model's pre-logits block (VGG's fc6 / fc7, run as
                               # convolutions) so pooling -> output follows the last convolution, as a fine-tuned
                               # VGG whose FC layers were replaced by one output layer (the VGG16 paper, fastai)
    "head_hidden": None,       # timm classifiers: a hidden dense layer of this width + ReLU before the output (the
                               # multi-task paper's Dense(128)); None = the output layer alone
    "decoder_attention": None,  # seg, smp Unet / UnetPlusPlus / kit_unet: decoder attention, e.g. scse
    "decoder_upsample": "nearest",     # seg, kit_unet: nearest | pixel_shuffle (ICNR, fastai's dynamic U-Net)
                                       # | transpose (a learned 2x2 up-convolution)
    "decoder_block": "plain",          # seg, kit_unet: plain | residual (conv body + 1x1 projected shortcut)
    "decoder_self_attention": False,   # seg, kit_unet: SAGAN self-attention on the stride-8 decoder stage
    "norm": "batch",           # batch | instance | group: every BatchNorm swapped (small batches, from scratch)
    "deep_supervision": 0,     # seg U-Nets: a loss on this many intermediate decoder stages too (nnU-Net); 0 = off
    "seg_head": "softmax",     # seg: softmax (3 exclusive classes) | sigmoid (2 independent lesion channels, the
                               # DPN-U-Net's; losses bce / focal / dice per channel, models.SigmoidLesionHead)
    # optimisation
    "epochs": 10,
    "batch_size": 16,
    "accum_steps": 1,
    "optimizer": "adamw",      # timm's: adamw | adam | sgd (Nesterov) | rmsprop | lion | lamb | lars | nadamw | radam
                               # | adan (training/optim.py)
    "lr": 1.0e-3,
    "weight_decay": 1.0e-4,
    "momentum": 0.9,
    "layer_decay": None,       # timm's layer-wise LR decay, e.g. 0.75: each layer's LR x 0.75 per layer below the top
    "scheduler": "cosine",     # cosine | onecycle | plateau | exponential | none
    "warmup_epochs": 0.0,
    "freeze_epochs": 0.0,      # the encoder (pretrained part) at LR 0 for this many epochs, then trained (fastai /
                               # Keras transfer learning: train the new head first)
    "lr_groups": {             # LR multipliers per parameter group (training/param_groups.py): discriminative LRs
        "encoder": 1.0,        # smp / hypercolumn encoder; a timm classifier's all but its classifier layer
        "head": 1.0,           # decoder, segmentation head, classifier layer, aux heads
    },
    "lr_gamma": 0.99,          # per-step decay factor for scheduler=exponential
    "plateau_patience": 2,     # scheduler=plateau: epochs without a better val metric before the LR drops
    "plateau_factor": 0.1,     # scheduler=plateau: LR multiplier on each drop
    "clip_grad": None,         # max gradient norm
    "loss": "ce",              # ce | bce | focal | dice | lovasz, or a sum such as "dice+ce" or {dice: 1.0, ce: 0.5}
    "class_weights": None,     # per-class weights for CE, e.g. [1.0, 2.0]; "balanced" = inverse frequency
    "sampler": None,           # None | balanced (classifier) | lesion (seg: lesion_share of each batch has lesions)
    "lesion_share": 0.5,
    "lesion_rest": "clear",    # sampler lesion: the batch's other slots from slices without lesions (clear) or from
                               # all training slices (all: the DPN-U-Net paper's "50 % from all the available slices")
    "epoch_steps": None,       # with a sampler (balanced | lesion): batches per epoch, so validation, best.pt and
                               # the plateau LR come every N steps (the DPN-U-Net paper: every 500); None = one pass
    "crop_size": None,         # seg: train on crops of this side (multiple of 32, <= img_size); validate on slices
    "fg_crop_share": 0.0,      # seg, with crop_size: share of crops centred on a random lesion pixel (nnU-Net: 0.33)
    "mixup": 0.0,              # Beta(a, a) of mixup (classifiers; blends images and labels); 0 = off
    "cutmix": 0.0,             # Beta(a, a) of CutMix (classifiers and seg: a pasted box, its mask with it); 0 = off
    "mix_prob": 1.0,           # with mixup / cutmix: share of training batches mixed (training/mixing.py)
    "seg_negatives": 0.0,      # seg: share of no-stroke slices added to training as negatives
    "seg_val_negatives": False,  # seg: also validate (and write OOF for) the fold's no-stroke slices
    "seg_lesion_type": None,   # seg: ischemic | hemorrhagic = a type-specific segmenter (trains on that type's
                               # slices, its masks keep that class only; validates on every lesion slice)
    "pseudo": None,            # seg: a pseudo-label folder from pseudo.py; its kept test images join every fold's
                               # training (their uncertain pixels ignored), never a validation set or an OOF file
    "amp": "bf16",             # bf16 | fp16 | none (CUDA only; CPU runs fp32)
    "channels_last": True,
    "ema": False,
    "ema_decay": 0.999,
    "early_stop": None,        # patience in epochs on the validation metric
    "metric": None,            # selection metric; None = the task's default (auc for classifiers, dice for
                               # seg, pp_dice... with select_postprocess); f1_at_best: F1 at the epoch's tuned threshold
    "select_postprocess": None,  # seg: a post-processing spec (postprocess.py keys, e.g. {threshold: 0.5,
                               # min_area: 20}) or an ensemble spec YAML whose `postprocess` it copies; validation
                               # also logs pp_* metrics of the phase-2 masks it draws, and they pick best.pt
    "topk_average": None,      # k: best.pt = mean weights (BatchNorm buffers too) of the k best epochs by the metric
    "seed": 42,
    "num_workers": 2,
    "sync_bn": False,          # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    "ddp_backend": None,       # under torchrun: None = nccl on CUDA, gloo on the CPU; or nccl | gloo
    "cache": True,             # preprocessing cache: decode, window and resize each image once (strokekit/data/cache.py)
    "cache_dir": None,         # where; None = <data>/.strokekit/cache (no cache when that data folder does not exist)
    "oof_tta": ["none", "hflip"],  # flips of the fold's final OOF pass: those infer.py applies by default
                               # (ensemble.py --tta), so thresholds and post-processing are tuned on what is submitted
    "oof_tta_scales": [1.0],   # TTA scales (factors of img_size, 0.5-2) of that pass: those infer.py applies by
                               # default (ensemble.py --tta-scales), e.g. [0.75, 1.0, 1.25]
    "oof_size": 128,           # seg OOF probabilities saved at this resolution (float16)
    "aug": {
        "hflip": 0.5,
        "vflip": 0.0,
        "shift_scale_rotate": 0.5,
        "rotate_limit": 15,
        "scale_limit": 0.1,
        "shift_limit": 0.0625,
        "brightness_contrast": 0.3,
        "elastic": 0.0,
        # the menu below is off by default (each a probability per sample); bench/seg_from_scratch.py measures it
        "rot90": 0.0,          # a random multiple of 90 degrees
        "gamma": 0.0,          # gamma 0.7-1.5 (nnU-Net)
        "low_res": 0.0,        # down- and up-sampled by 0.5-1 (nnU-Net's low-resolution simulation)
        "grid_distortion": 0.0,
        "clahe": 0.0,          # contrast-limited histogram equalisation
        "noise": 0.0,          # Gaussian noise
        "blur": 0.0,           # Gaussian blur
        "coarse_dropout": 0.0,  # up to 8 holes of 1/16 of the side; masks keep their labels
        "roi_crop": 0.0,       # crop to the head's bounding box (pixels above air), a random 0-15 % margin kept,
                               # resized back to img_size (the VGG16 + improved U-Net paper's ROI augmentation)
        "window_shift": 0.0,   # DICOM: each window's centre moved U(-x, x) HU per sample (HU-window jitter)
        "window_scale": 0.0,   # DICOM: each window's width multiplied by U(1 - x, 1 + x) per sample
    },
}


class ConfigError(UserError, ValueError):
    """A config file or override that names an unknown key or gives a value of the wrong type."""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict:
    """Resolve defaults < YAML file < overrides ("key=value" strings) into one validated dict."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.exists() and path.with_suffix(".yaml").exists():
            path = path.with_suffix(".yaml")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        from_file = _yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path}: a config must be a mapping of keys to values")
        merge(cfg, from_file, source=str(path))
        if cfg["name"] is None:
            cfg["name"] = path.stem
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        set_key(cfg, key.strip(), _yaml(text, f"--set {item}"), source="--set")
    if cfg["name"] is None:
        cfg["name"] = f"{cfg['task']}_{cfg['model']}"
    validate(cfg)
    return cfg


def _yaml(text: str, source: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({err})".replace("\n", " ")) from None


def merge(cfg: dict, changes: dict, source: str) -> None:
    """Apply a (nested) mapping of changes key by key, so each is checked like a --set override."""
    for dotted, value in _flatten(changes):
        set_key(cfg, dotted, value, source)


def _flatten(changes: dict, prefix: str = ""):
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(_default_at(dotted), dict) and key != "loss":
            yield from _flatten(value, prefix=dotted + ".")
        else:
            yield dotted, value


def _default_at(dotted: str):
    node = DEFAULTS
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_key(cfg: dict, dotted: str, value: Any, source: str) -> None:
    """Set one (dotted) key, checked against its schema rule (config/schema.py) on the spot."""
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(_unknown(dotted, node, source))
        node = node[part]
    if last not in node or dotted not in SCHEMA:
        raise ConfigError(_unknown(dotted, node, source))
    try:
        node[last] = check_value(dotted, value)
    except BadValue as err:
        raise ConfigError(f"{dotted}: {err} ({source})") from None


def _unknown(key: str, node: dict, source: str) -> str:
    import difflib

    leaf = key.split(".")[-1]
    close = difflib.get_close_matches(leaf, list(node), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"{source}: unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(node))}"


def validate(cfg: dict) -> None:
    """Every key against its schema rule, then the rules between keys; the first problem raises ConfigError
    as `<key>: <problem>`. Reads no data: train.py calls it before anything else."""
    for key, rule in SCHEMA.items():
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        try:
            node[last] = rule.check(node[last])
        except BadValue as err:
            raise ConfigError(f"{key}: {err}") from None
    name = str(cfg["name"])
    if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise ConfigError(f"name: {name!r} must be a plain folder name (runs go to <runs_dir>/<name>/, never "
                          "outside runs_dir)")
    validate_selection(cfg)
    for key, problem in cross_checks(cfg):
        raise ConfigError(f"{key}: {problem}")


def validate_selection(cfg: dict) -> None:
    """select_postprocess: a seg-only post-processing spec without a gate (an ensemble spec file's is copied)."""
    spec = cfg["select_postprocess"]
    if spec is None:
        return
    if isinstance(spec, str):  # an ensemble spec file: its searched post-processing, copied into the config
        spec = cfg["select_postprocess"] = _spec_postprocess(Path(spec))
    if cfg["task"] != "seg":
        raise ConfigError(f"select_postprocess: is for task seg (classifiers select on e.g. metric: f1_at_best), "
                          f"not {cfg['task']}")
    if not isinstance(spec, dict):
        raise ConfigError(f"select_postprocess: must be a post-processing mapping such as {{min_area: 20}}, "
                          f"got {spec!r}")
    try:
        spec = normalise_spec(spec)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"select_postprocess: {str(err).strip(chr(34) + chr(39))}") from None
    if spec["gate"] is not None:
        raise ConfigError("select_postprocess: cannot gate on an image classifier during training; drop `gate`")


def _spec_postprocess(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"select_postprocess: {path} is neither a post-processing mapping nor an existing file")
    spec = _yaml(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(spec, dict) or not isinstance(spec.get("postprocess"), dict):
        raise ConfigError(f"select_postprocess: {path} holds no `postprocess` mapping "
                          "(an ensemble.py --task seg spec does)")
    return spec["postprocess"]


def folds_path(cfg: dict) -> Path:
    return Path(cfg["folds"]) if cfg["folds"] else Path(cfg["data"]) / "folds.csv"


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def add_config_args(parser) -> None:
    """The --config / --set pair every script shares."""
    parser.add_argument("--config", help="config YAML (configs/<name>.yaml); keys it omits keep their defaults")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set lr=3e-4 epochs=5 aug.hflip=0; unknown keys fail")
