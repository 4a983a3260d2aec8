"""Config: defaults < YAML < --set, unknown keys and wrong types fail, resolved config round-trips."""
import pytest
import yaml

from strokekit.config import DEFAULTS, ConfigError, load_config, save_config


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_yaml_cli(tmp_path):
    path = write(tmp_path, "lr: 0.01\nepochs: 3\naug:\n  hflip: 0.0\n")
    cfg = load_config(path, ["lr=3e-4", "aug.vflip=0.5"])
    assert cfg["lr"] == 3e-4 and cfg["epochs"] == 3
    assert cfg["aug"]["hflip"] == 0.0 and cfg["aug"]["vflip"] == 0.5
    assert cfg["aug"]["rotate_limit"] == DEFAULTS["aug"]["rotate_limit"]
    assert cfg["name"] == "exp"


@pytest.mark.parametrize("override,match", [("lrr=1", "unknown config key 'lrr'.*Did you mean lr"),
                                            ("aug.hfip=1", "unknown config key 'aug.hfip'"),
                                            ("epochs=fast", "epochs: must be a whole number"),
                                            ("lr", "key=value"),
                                            ("task=detect", "task: must be one of stroke, type, seg")])
def test_bad_overrides_fail(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unknown_key_in_file_fails(tmp_path):
    with pytest.raises(ConfigError, match="exp.yaml: unknown config key 'batchsize'"):
        load_config(write(tmp_path, "batchsize: 8\n"))


def test_int_promotes_to_float_and_lists_and_none():
    cfg = load_config(None, ["lr=1", "windows=[[40,80],[80,200],[32,8]]", "image_source=dicom",
                             "clip_grad=1.0", "loss={dice: 1.0, ce: 0.5}"])
    assert isinstance(cfg["lr"], float) and len(cfg["windows"]) == 3
    assert cfg["clip_grad"] == 1.0 and cfg["loss"] == {"dice": 1.0, "ce": 0.5}


def test_window_count_must_fit_channels():
    with pytest.raises(ConfigError, match="cannot fill in_chans"):
        load_config(None, ["image_source=dicom", "windows=[[40,80],[80,200]]", "in_chans=3"])


def test_seg_size_multiple_of_32():
    with pytest.raises(ConfigError, match="multiple of 32.*try 128"):
        load_config(None, ["task=seg", "img_size=130"])


def test_missing_file_and_suffixless_name(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path, "epochs: 2\n")
    assert load_config(tmp_path / "exp")["epochs"] == 2


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["lr=0.02", "name=x"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["lr"] == 0.02


def test_shipped_configs_load():
    from pathlib import Path

    configs = Path(__file__).parents[1] / "configs"
    paths = sorted(configs.glob("*.yaml")) + sorted((configs / "recipes").rglob("*.yaml"))
    assert len(paths) > 20
    for path in paths:
        load_config(path)


# Values of the right shape but outside what the key allows: each is refused by load_config, naming the key
# and what is allowed, before any data is read (train.py: test_train.py::test_bad_config_value_exits_2_at_once).
BAD_VALUES = [
    ("early_stop=abc", "early_stop: must be a whole number >= 1 or null"),
    ("early_stop=0", "early_stop: must be a whole number >= 1"),
    ("clip_grad=abc", "clip_grad: must be a finite number > 0 or null"),
    ("clip_grad=-1", "clip_grad: must be a finite number > 0"),
    ("weights=123", "weights: must be a non-empty string or null"),
    ("metric=bogus", "metric: 'bogus' is not logged for task stroke.*allowed: val_loss, auc"),
    ("metric=dice_micro_ischemic", "metric: .* not logged for task stroke"),
    ("sampler=bogus", "sampler: must be one of none, balanced, lesion or null"),
    ("sampler=lesion", "sampler: 'lesion' does not fit task stroke; allowed: balanced"),
    ("lr=-1", "lr: must be a finite number > 0, got -1"),
    ("lr=0", "lr: must be a finite number > 0"),
    ("lr=nan", "lr: must be a finite number > 0, got 'nan'"),
    ("lr=.inf", "lr: must be a finite number > 0"),
    ("aug.hflip=5", r"aug.hflip: must be a finite number in \[0, 1\], got 5"),
    ("aug.elastic=-0.1", r"aug.elastic: must be a finite number in \[0, 1\]"),
    ("num_workers=-1", "num_workers: must be a whole number in \\[0, 256\\]"),
    ("img_size=7", "img_size: must be a whole number in \\[32, 4096\\], got 7"),
    ("img_size=64.5", "img_size: must be a whole number"),
    ("epochs=0", "epochs: must be a whole number >= 1"),
    ("batch_size=true", "batch_size: must be a whole number"),
    ("optimizer=adamm", "optimizer: must be one of adamw, adam, sgd, rmsprop, lion"),
    ("scheduler=step", "scheduler: must be one of cosine, poly, onecycle, plateau, exponential, none"),
    ("amp=fp8", "amp: must be one of bf16, fp16, none"),
    ("loss=dice+bogus", "loss: must be a loss name \\(ce, bce, focal, dice, lovasz"),
    ("loss={dice: -1}", "loss: must be"),
    ("loss=7", "loss: must be"),
    ("class_weights=[1, 2, 3]", "class_weights: task stroke has 2 classes, got 3"),
    ("class_weights=heavy", "class_weights: must be balanced or a list"),
    ("momentum=1.5", "momentum: must be a finite number in \\[0, 1\\)"),
    ("ema_decay=1", "ema_decay: must be a finite number in \\[0, 1\\)"),
    ("lr_gamma=0", "lr_gamma: must be a finite number in \\(0, 1\\]"),
    ("weight_decay=-0.1", "weight_decay: must be a finite number >= 0"),
    ("warmup_epochs=-1", "warmup_epochs: must be a finite number >= 0"),
    ("drop_rate=1", "drop_rate: must be a finite number in \\[0, 1\\)"),
    ("std=0", "std: must be a finite number > 0"),
    ("seed=-1", "seed: must be a whole number in"),
    ("pretrained=yes please", "pretrained: must be true or false"),
    ("decoder_attention=cbam", "decoder_attention: must be one of scse or null"),
    ("seg_negatives=2", "seg_negatives: must be a finite number in \\[0, 1\\]"),
    ("aux_seg=-1", "aux_seg: must be a finite number >= 0"),
    ("windows=[[40, 0]]", "windows: must be a list of \\[center, width\\] pairs with width > 0"),
    ("topk_average=0", "topk_average: must be a whole number >= 1 or null"),
    ("model=", "model: must be a non-empty string"),
    ("in_chans=0", "in_chans: must be a whole number in"),
    ("oof_size=0", "oof_size: must be a whole number in"),
]


@pytest.mark.parametrize("override,match", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key_and_what_is_allowed(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("text,match", [("early_stop: abc\n", "early_stop: must be a whole number"),
                                        ("aug:\n  hflip: 5\n", "aug.hflip: must be a finite number in"),
                                        ("task: seg\nsampler: balanced\n", "sampler: 'balanced' does not fit task seg"),
                                        ("task: seg\nclass_weights: balanced\n", "class_weights: balanced is for"),
                                        ("task: seg\nclass_weights: [1, 2]\n", "class_weights: task seg has 3"),
                                        ("metric: pp_dice_micro_ischemic\ntask: seg\n", "metric: .* not logged")])
def test_bad_values_in_a_file_are_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_validate_checks_values_set_in_code():
    from strokekit.config import validate

    cfg = load_config(None)
    cfg["lr"] = -1
    with pytest.raises(ConfigError, match="^lr: must be a finite number > 0"):
        validate(cfg)


@pytest.mark.parametrize("overrides", [["metric=f1_at_best"], ["metric=val_loss"], ["sampler=balanced"],
                                       ["sampler=none"], ["class_weights=balanced"], ["class_weights=[1, 2]"],
                                       ["task=seg", "sampler=lesion", "metric=dice_micro_any_lesion"],
                                       ["task=seg", "select_postprocess={min_area: 20}",
                                        "metric=pp_official_iou"],
                                       ["task=seg", "seg_val_negatives=true", "metric=negatives_with_lesion_pred"],
                                       ["loss=0.5*dice+ce", "lr=3e-4", "aug.rotate_limit=12.5", "amp=none"],
                                       ["amp=null"],
                                       ["clip_grad=1", "early_stop=3", "weights=w.pt", "lr=1"]])
def test_good_values_pass(overrides):
    cfg = load_config(None, overrides)
    assert isinstance(cfg["lr"], float)


def test_every_key_has_a_rule():
    from strokekit.config.schema import SCHEMA

    def keys(node, prefix=""):
        for key, value in node.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]

    assert sorted(keys(DEFAULTS)) == sorted(SCHEMA)
    load_config(None)  # the defaults pass their own rules


def test_config_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, strokekit.config, strokekit.config.schema; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_schema_names_equal_the_training_registries():
    from strokekit.config import schema
    from strokekit.models import precision
    from strokekit.training import losses, optim, tasks

    assert schema.LOSSES == tuple(losses.LOSSES)
    assert schema.OPTIMIZERS == optim.OPTIMIZERS and schema.SCHEDULES == optim.SCHEDULES
    assert schema.CLASSIFIER_METRICS == tasks.CLASSIFIER_METRICS
    assert set(schema.AMP) == {"none", *precision.AMP_DTYPES}
    assert schema.SAMPLERS == {name: task.samplers for name, task in tasks.TASKS.items()}


@pytest.mark.parametrize("overrides", [["task=stroke"], ["task=type"], ["task=seg"],
                                       ["task=seg", "seg_val_negatives=true", "select_postprocess={min_area: 2}"]])
def test_schema_metric_names_equal_what_validation_logs(overrides):
    """The metric names validate allows are exactly the keys a validation pass logs (tasks.finish + val_loss)."""
    import numpy as np
    import torch

    from strokekit.config.schema import metric_names
    from strokekit.training.tasks import get_task

    cfg = load_config(None, overrides)
    task = get_task(cfg["task"])
    state = task.new_state(cfg)
    if cfg["task"] == "seg":
        n = 3 if cfg["seg_val_negatives"] else 2  # the third slice, lesion-free, is validated only then
        masks = [np.zeros((8, 8), np.uint8) for _ in range(n)]
        masks[0][2:5, 2:5], masks[1][4:6, 1:3] = 1, 2
        probs = torch.rand(n, 3, 8, 8).softmax(dim=1)
        task.accumulate(state, {"mask_full": masks, "image_id": torch.arange(n)}, probs)
    else:
        task.accumulate(state, {"image_id": torch.arange(4), "target": torch.tensor([0, 1, 0, 1])},
                        torch.tensor([0.2, 0.7, 0.4, 0.9]))
    logged = {"val_loss", *task.finish(state)}
    assert logged == set(metric_names(cfg))
