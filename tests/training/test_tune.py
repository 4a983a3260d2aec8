"""tune.py: 3 Optuna trials on the phantom are 3 normal run folders whose configs hold the sampled values, the
best becomes a loadable config, the study resumes (and retries an interrupted trial), the median pruner stops
a trial from the engine's per-epoch reports, and a bad search space fails before any training."""
import os
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import tune
from strokekit.config import load_config
from strokekit.data.index import build_index
from strokekit.data.folds import read_folds
from strokekit.training.tuning import StudyLock, TuneError, apply_params, check_space, read_space, run_search
from conftest import small_phantom

ROOT = Path(__file__).resolve().parents[2]
SPACE = {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
         "loss.focal": {"type": "float", "low": 0.5, "high": 2.0},
         "aug.brightness_contrast": {"type": "float", "low": 0.0, "high": 0.5}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("tune"), n=48, seed=1, size=64, n_test1=2, n_test2=2)


def tiny(phantom: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["model=tiny_cnn", "img_size=64", "epochs=2", "batch_size=8", "num_workers=0", f"data={phantom}",
            f"runs_dir={tmp_path / 'runs'}", *extra]


def write_space(tmp_path: Path, space: dict = SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def load_study(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=study_dir.name, storage=f"sqlite:///{study_dir / 'study.db'}")


def test_three_trials_are_runs_and_the_best_becomes_a_config(phantom, tmp_path, capsys):
    study_dir, sets = tmp_path / "tunes" / "tiny", tiny(phantom, tmp_path)
    args = ["--set", *sets, "--space", write_space(tmp_path), "--trials", "3", "--study-dir", study_dir]
    assert tune.main([str(a) for a in args]) == 0
    trials = load_study(study_dir).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    base = load_config(None, sets)
    for trial in trials:
        run_dir = tmp_path / "runs" / f"tiny_t{trial.number}" / "fold0"
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg == {**apply_params(base, trial.params), "name": f"tiny_t{trial.number}"}
        assert cfg["loss"] == {"ce": 1.0, "focal": pytest.approx(trial.params["loss.focal"])}
        summary = yaml.safe_load((run_dir / "summary.json").read_text())  # JSON is YAML
        assert summary["best_metric"] == pytest.approx(trial.value) and (run_dir / "done").is_file()
        assert len(pd.read_csv(run_dir / "log.csv")) == 2 and (run_dir / "curves.png").is_file()  # tune.py draws it
    best = max(trials, key=lambda t: t.value)
    tuned = load_config(study_dir / "tiny_tuned.yaml")
    assert tuned == {**apply_params(base, best.params), "name": "tiny_tuned"}
    assert len(pd.read_csv(study_dir / "trials.csv")) == 3

    stamps = {t.number: (tmp_path / f"runs/tiny_t{t.number}/fold0/summary.json").stat().st_mtime for t in trials}
    args[args.index("3")] = "4"
    assert tune.main([str(a) for a in args]) == 0  # resumes: one more trial, the first three untouched
    resumed = load_study(study_dir).trials
    assert [t.number for t in resumed] == [0, 1, 2, 3] and resumed[3].state.is_finished()
    assert (tmp_path / "runs/tiny_t3/fold0/log.csv").is_file()  # completed or pruned after epoch 2
    assert all((tmp_path / f"runs/tiny_t{n}/fold0/summary.json").stat().st_mtime == s for n, s in stamps.items())

    args[args.index("epochs=2")] = "epochs=3"  # another base config: its trials would not compare
    assert tune.main([str(a) for a in args]) == 2
    assert "started with another base config" in capsys.readouterr().err

    again = tmp_path / "tunes" / "again"  # same seed, fresh study: the same first suggestion
    args = ["--set", *tiny(phantom, tmp_path), "--space", write_space(tmp_path), "--trials", "1", "--study-dir", again]
    assert tune.main([str(a) for a in args]) == 0
    assert load_study(again).trials[0].params == trials[0].params


def test_median_pruner_stops_a_trial_from_the_epoch_reports(phantom, tmp_path):
    """Two earlier trials reached val_loss 0 at every epoch; any real run is worse, so it is pruned at epoch 1."""
    study_dir = tmp_path / "tunes" / "pruned"
    study_dir.mkdir(parents=True)
    space = {"lr": SPACE["lr"]}
    study = optuna.create_study(study_name="pruned", storage=f"sqlite:///{study_dir / 'study.db'}",
                                direction="minimize")
    for lr in (1e-3, 2e-3):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            value=0.0, intermediate_values={1: 0.0, 2: 0.0, 3: 0.0}))
    cfg = load_config(None, tiny(phantom, tmp_path, "epochs=3", "metric=val_loss"))
    index, _ = build_index(phantom)
    run_search(cfg, space, 3, [0], study_dir, index, read_folds(phantom / "folds.csv", index),
               startup_trials=2, warmup_epochs=0, log=lambda msg: None)
    trial = load_study(study_dir).trials[2]
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run_dir = tmp_path / "runs" / "pruned_t2" / "fold0"
    assert len(pd.read_csv(run_dir / "log.csv")) == 1  # stopped after the first of 3 epochs
    assert (run_dir / "pruned").is_file() and not (run_dir / "done").exists()


def test_an_interrupted_trial_is_retried_with_its_parameters(phantom, tmp_path):
    study_dir = tmp_path / "tunes" / "killed"
    cfg = load_config(None, tiny(phantom, tmp_path, "epochs=1"))
    index, _ = build_index(phantom)
    folds = read_folds(phantom / "folds.csv", index)
    study = run_search(cfg, {"lr": SPACE["lr"]}, 1, [0], study_dir, index, folds, log=lambda msg: None)
    stale = study.ask()  # what a killed tune.py leaves: a RUNNING trial with suggested parameters
    stale.suggest_float("lr", 1e-4, 1e-2, log=True)
    run_search(cfg, {"lr": SPACE["lr"]}, 2, [0], study_dir, index, folds, log=lambda msg: None)
    trials = load_study(study_dir).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params


def test_a_bad_space_fails_before_training(tmp_path):
    seg = load_config(None, ["task=seg", "model=Unet", "loss=dice+ce"])
    with pytest.raises(TuneError, match="lr_max.*Did you mean lr"):
        check_space({"lr_max": SPACE["lr"]}, seg)
    with pytest.raises(TuneError, match="multiple of 32"):
        check_space({"img_size": {"type": "int", "low": 256, "high": 320, "step": 16}}, seg)
    with pytest.raises(TuneError, match="unknown loss 'dise'"):
        check_space({"loss.dise": SPACE["loss.focal"]}, seg)
    for bad, words in (({"type": "float", "low": 2.0, "high": 1.0}, "low < high"),
                       ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log range"),
                       ({"type": "categorical", "choices": []}, "choices"),
                       ({"type": "uniform", "low": 0, "high": 1}, "type"),
                       ({"type": "int", "low": 1, "high": 9, "steps": 2}, "unknown fields")):
        with pytest.raises(TuneError, match=words):
            read_space(write_space(tmp_path, {"lr": bad}))


def test_loss_terms_and_nested_keys_are_set_by_the_space():
    seg = load_config(None, ["task=seg", "model=Unet", "loss=dice+ce"])
    cfg = apply_params(seg, {"loss.dice": 2.5, "aug.elastic": 0.2, "img_size": 320})
    assert cfg["loss"] == {"dice": 2.5, "ce": 1.0} and cfg["aug"]["elastic"] == 0.2 and cfg["img_size"] == 320
    assert seg["loss"] == "dice+ce"  # the base config is not changed


@pytest.mark.parametrize("space,base", [
    ("example_space.yaml", ["model=resnet18"]),
    ("seg_space.yaml", ["task=seg", "model=Unet", "loss=dice+ce", "sampler=lesion", "seg_negatives=0.3"]),
])
def test_shipped_spaces_fit_their_configs(space, base):
    check_space(read_space(ROOT / "configs" / "spaces" / space), load_config(None, base))


def test_one_tune_per_study(tmp_path):
    (tmp_path / "tune.lock").write_text(f"{os.getppid()}\n")  # a live process holds it
    with pytest.raises(TuneError, match="already running"):
        with StudyLock(tmp_path):
            pass
    (tmp_path / "tune.lock").write_text("999999999\n")  # a dead one: taken over
    with StudyLock(tmp_path):
        assert (tmp_path / "tune.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "tune.lock").exists()
