"""Hyper-parameter search over config keys with Optuna: TPE sampling, median pruning on the per-epoch
validation metric, every trial a normal run directory, resumable from the study's SQLite file.

A search space (YAML) maps config keys to ranges; `loss.<term>` sets the weight of one term of the loss sum:
    lr:                      {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    loss.dice:               {type: float, low: 0.25, high: 4.0, log: true}
    img_size:                {type: int, low: 192, high: 320, step: 64}
    aug.brightness_contrast: {type: float, low: 0.0, high: 0.5}
    model:                   {type: categorical, choices: [resnet18, resnet34]}
Trial k of study <name> trains <runs_dir>/<name>_t<k>/fold<f>/ exactly as train.py would and scores the mean
over its folds of the best epoch's selection metric (`metric`, default the task's). Each epoch's value is
reported to the median pruner (step = fold position x epochs + epoch). The study lives in <study dir>/study.db;
the same command run again continues it until --trials trials have finished (completed or pruned).
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import optuna
import yaml

from strokekit.config import DEFAULTS, ConfigError, save_config, set_key, validate
from strokekit.errors import UserError
from strokekit.training.losses import LOSSES, parse_loss_spec
from strokekit.training.tasks import selection_metric

KINDS = ("float", "int", "categorical")
FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
          "categorical": {"type", "choices"}}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class TuneError(UserError, ValueError):
    """A search space, study folder or run folder that tune.py cannot use as it is."""


# --------------------------------------------------------------------------- the search space


def read_space(path: str | os.PathLike) -> dict[str, dict]:
    """The space file's entries, checked for shape (keys are checked against a config by `check_space`)."""
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"search space {path} does not exist")
    try:
        space = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise TuneError(f"{path}: not readable YAML ({err})".replace("\n", " ")) from None
    if not isinstance(space, dict) or not space:
        raise TuneError(f"{path}: a search space maps config keys to ranges, e.g. lr: {{type: float, low: 1.0e-4, "
                        "high: 1.0e-2, log: true}")
    for key, spec in space.items():
        where = f"{path}: {key}"
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise TuneError(f"{where}: needs type: {' | '.join(KINDS)}")
        extra = set(spec) - FIELDS[spec["type"]]
        if extra:
            raise TuneError(f"{where}: unknown fields {sorted(extra)}; a {spec['type']} takes "
                            f"{sorted(FIELDS[spec['type']])}")
        if spec["type"] == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or \
                    not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise TuneError(f"{where}: choices must be a non-empty list of numbers, strings or booleans")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise TuneError(f"{where}: needs numbers low < high, got low={low!r} high={high!r}")
        if spec.get("log") and low <= 0:
            raise TuneError(f"{where}: a log range needs low > 0")
        if spec.get("log") and spec.get("step"):
            raise TuneError(f"{where}: give log: true or a step, not both")
        if spec["type"] == "int" and not all(isinstance(v, int) for v in (low, high, spec.get("step", 1))):
            raise TuneError(f"{where}: an int range needs integer low, high and step")
    return space


def apply_params(cfg: dict, params: dict) -> dict:
    """A copy of cfg with the sampled values set (`loss.<term>` weighs one loss term), validated."""
    cfg = copy.deepcopy(cfg)
    for key, value in params.items():
        if key.startswith("loss."):
            term = key.split(".", 1)[1]
            if term not in LOSSES:
                raise TuneError(f"search space: {key}: unknown loss {term!r}; losses: {', '.join(LOSSES)}")
            cfg["loss"] = {**parse_loss_spec(cfg["loss"]), term: float(value)}
        else:
            set_key(cfg, key, value, source="search space")
    validate(cfg)
    return cfg


def check_space(space: dict, cfg: dict) -> None:
    """Every key exists and every choice, int value (or both ends of a range) gives a valid config: fail early."""
    for key, spec in space.items():
        if spec["type"] == "categorical":
            values = spec["choices"]
        elif spec["type"] == "int" and (spec["high"] - spec["low"]) // spec.get("step", 1) <= 64:
            values = range(spec["low"], spec["high"] + 1, spec.get("step", 1))  # e.g. img_size steps
        else:
            values = [spec["low"], spec["high"]]
        for value in values:
            try:
                apply_params(cfg, {key: value})
            except ConfigError as err:
                raise TuneError(f"search space: {key}={value!r} does not fit the config: {err}") from None


def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                            log=spec.get("log", False))
        else:
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"),
                                              log=spec.get("log", False))
    return params


# --------------------------------------------------------------------------- the study


PATH_KEYS = ("data", "folds", "runs_dir", "num_workers")  # may change between sessions of one study


def record_start(study_dir: Path, space: dict, cfg: dict) -> None:
    """space.yaml and base_config.yaml on the first run; a later run must bring the same (paths aside)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in cfg.items() if k not in PATH_KEYS}
    for name, wanted in (("space.yaml", space), ("base_config.yaml", base)):
        path = study_dir / name
        if not path.is_file():
            path.write_text(yaml.safe_dump(wanted, sort_keys=False), encoding="utf-8")
            continue
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        if saved != wanted:
            keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise TuneError(f"{study_dir} was started with another {name[:-5].replace('_', ' ')} ({path}; "
                            f"differs in {', '.join(keys)}): trials would not compare; use a new --study-dir")


def open_study(study_dir: Path, direction: str, seed: int, random_trials: int, startup_trials: int,
               warmup_epochs: int) -> optuna.Study:
    """Create or continue the study in study_dir/study.db (one tune.py per study at a time: see `StudyLock`)."""
    study = optuna.create_study(
        study_name=study_dir.name, storage=f"sqlite:///{(study_dir / 'study.db').resolve()}", load_if_exists=True,
        # steps are 1-based epochs: epoch e may be pruned once e > warmup_epochs
        direction=direction, pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                                                n_warmup_steps=warmup_epochs + 1))
    if study.direction.name.lower() != direction:
        raise TuneError(f"{study_dir}: the study {study.direction.name.lower()}s its metric, this config's "
                        f"metric needs {direction}; use a new --study-dir")
    # seeded by the history's length, so a resumed study does not replay the suggestions it began with
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=random_trials)
    return study


def retry_interrupted(study: optuna.Study, log=print) -> None:
    """Trials left RUNNING by a killed tune.py are marked failed and their parameters queued again."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
        log(f"trial {trial.number} was interrupted: marked failed, its parameters queued again")


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class StudyLock:
    """A pid file in the study folder: two tune.py processes on one study would mistake each other's running
    trials for interrupted ones."""

    def __init__(self, study_dir: Path):
        self.path = study_dir / "tune.lock"

    def __enter__(self):
        if self.path.is_file():
            pid = int(self.path.read_text().strip() or 0)
            if pid and _alive(pid):
                raise TuneError(f"{self.path}: tune.py (pid {pid}) is already running this study")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def epoch_reporter(trial: optuna.Trial, metric: str, offset: int):
    """engine.train_fold's on_epoch_end: report the epoch's metric; raise TrialPruned when the pruner says so."""
    def report(epoch: int, row: dict) -> None:
        value = row.get(metric)
        if value is None or not math.isfinite(value):
            return
        trial.report(float(value), offset + epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{metric} {value:.4f} at epoch {epoch} is worse than the median of earlier "
                                     "trials at that epoch")
    return report


def run_search(cfg: dict, space: dict, n_trials: int, folds_to_run: list[int], study_dir, index, folds,
               seed: int | None = None, random_trials: int = 10, startup_trials: int = 3, warmup_epochs: int = 1,
               log=print, draw_curves=None) -> optuna.Study:
    """Run trials until the study in study_dir holds n_trials finished ones; returns the study.

    `draw_curves`: train_fold's, for each trial fold's curves.png (tune.py passes report.figures.fold_curves)."""
    from strokekit.training.engine import train_fold  # torch and the models load only once the space has been checked

    study_dir = Path(study_dir)
    check_space(space, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says the same
    metric, mode = selection_metric(cfg)
    with StudyLock(study_dir):
        record_start(study_dir, space, cfg)
        study = open_study(study_dir, "maximize" if mode == "max" else "minimize",
                           cfg["seed"] if seed is None else seed, random_trials, startup_trials, warmup_epochs)
        retry_interrupted(study, log)

        def objective(trial: optuna.Trial) -> float:
            params = suggest(trial, space)
            trial_cfg = apply_params(cfg, params)
            trial_cfg["name"] = f"{study_dir.name}_t{trial.number}"
            run_root = Path(trial_cfg["runs_dir"]) / trial_cfg["name"]
            if run_root.exists():
                raise TuneError(f"{run_root} already exists (from another study of this name?); move it away "
                                "or choose another --study-dir")
            trial.set_user_attr("run", str(run_root))
            log(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
            scores = []
            for position, fold in enumerate(folds_to_run):
                run_dir = run_root / f"fold{fold}"
                save_config(trial_cfg, run_dir / "config.yaml")
                try:
                    summary = train_fold(trial_cfg, index, folds, fold, run_dir, progress=False,
                                         log=lambda msg: log(f"  [t{trial.number}] {msg}"),
                                         on_epoch_end=epoch_reporter(trial, metric, position * trial_cfg["epochs"]),
                                         draw_curves=draw_curves)
                except optuna.TrialPruned as pruned:
                    (run_dir / "pruned").write_text(f"{pruned}\n", encoding="utf-8")
                    log(f"trial {trial.number}: pruned, {pruned}")
                    raise
                averaged = summary.get("topk_average") or {}  # best.pt holds the top-k mean: score that model
                scores.append(float(averaged.get("averaged_metric", summary["best_metric"])))
            trial.set_user_attr("fold_scores", scores)
            value = sum(scores) / len(scores)
            log(f"trial {trial.number}: {metric} {value:.4f} (folds {', '.join(f'{s:.4f}' for s in scores)})")
            return value

        todo = n_trials - finished_trials(study)
        if todo > 0:
            study.optimize(objective, n_trials=todo, catch=(FloatingPointError,), gc_after_trial=True)
        else:
            log(f"{study_dir}: {finished_trials(study)} trials finished already (--trials {n_trials})")
    return study


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- what the study leaves behind


def differences(cfg: dict, defaults: dict = DEFAULTS) -> dict:
    """The keys of cfg whose values differ from the defaults (nested for aug), as a config file lists them."""
    out = {}
    for key, value in cfg.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and key != "loss":
            nested = differences(value, default)
            if nested:
                out[key] = nested
        elif value != default:
            out[key] = value
    return out


def write_results(study: optuna.Study, cfg: dict, study_dir) -> Path | None:
    """trials.csv, and <study>_tuned.yaml: the best trial's config as a normal config file (differences only)."""
    study_dir = Path(study_dir)
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    table.to_csv(study_dir / "trials.csv", index=False)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return None
    best = study.best_trial
    tuned = apply_params(cfg, best.params)
    tuned["name"] = f"{study_dir.name}_tuned"
    metric, _ = selection_metric(cfg)
    folds = ", ".join(f"{v:.4f}" for v in best.user_attrs.get("fold_scores", []))
    header = (f"# Tuned by tune.py (study {study_dir}): trial {best.number} of {len(completed)} completed, "
              f"{metric} {best.value:.4f}\n# (mean over folds: {folds}), run {best.user_attrs.get('run', '?')}. "
              f"Searched: {', '.join(best.params)}.\n")
    path = study_dir / f"{study_dir.name}_tuned.yaml"
    path.write_text(header + yaml.safe_dump(differences(tuned), sort_keys=False), encoding="utf-8")
    return path
