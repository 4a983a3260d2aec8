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
                                            ("epochs=fast", "epochs must be int"),
                                            ("lr", "key=value"),
                                            ("task=detect", "task must be one of")])
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

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(path)
