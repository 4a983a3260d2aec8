"""Experiment trackers for train.py: `--log tensorboard|wandb|mlflow` (or the config key `log`).

Each tracker sees the engine's per-epoch hook (`train_fold(on_epoch_end=...)`): every numeric value of the
epoch's log.csv row (train / val loss, the validation metrics, LR, epoch time, images/s, data wait), and at
the end the fold's final OOF figures (summary.json's `final_metrics`, under `oof/`). Offline only; nothing
is contacted unless the user asks for it:

    tensorboard  event files in <fold>/tb/ (`tensorboard --logdir runs/<name>` shows every fold); a --resume
                 drops the events of the epochs it redoes and goes on in the same curves
    wandb        mode offline (<fold>/wandb/, `wandb sync` uploads it later) unless WANDB_MODE is set;
                 project WANDB_PROJECT or strokekit, group = the run name, one wandb run per fold and session
    mlflow       a local SQLite file <fold>/mlflow.db (MLflow 3's local store; `mlflow ui --backend-store-uri
                 sqlite:///<fold>/mlflow.db`) unless MLFLOW_TRACKING_URI is set; experiment = the run name,
                 one mlflow run per fold and session

The three packages are optional: each is imported only when asked for, and a missing one is a one-line
error before training starts (`check_available`). Rank 0 alone logs under torchrun (train.py opens the
trackers there only).
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

from strokekit.errors import UserError

TRACKERS = ("tensorboard", "wandb", "mlflow")  # config/schema.TRACKERS (tests/test_config.py keeps them equal)
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # pip package of each


class TrackerMissingError(UserError, ImportError):
    """--log names a tracker whose package is not installed."""


def check_available(names) -> None:
    """A one-line error, before anything trains, for each asked tracker whose package is not installed."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise TrackerMissingError(f"--log {','.join(missing)}: {' and '.join(missing)} "
                                  f"{'is' if len(missing) == 1 else 'are'} not installed; "
                                  f"pip install {' '.join(INSTALL[m] for m in missing)} (or drop it from --log / `log`)")


def tag(key: str) -> str:
    """A log.csv column's name on the trackers' charts: losses together, metrics under val/, timing under time/."""
    special = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "opt/lr", "time_s": "time/epoch_s",
               "images_per_s": "time/images_per_s", "data_wait": "time/data_wait"}
    return special.get(key, f"val/{key}")


def numbers(values: dict) -> dict[str, float]:
    """The finite numeric values of a row (epoch counters, text and NaN left out)."""
    out = {}
    for key, value in values.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def flat(cfg: dict, prefix: str = "") -> dict[str, str]:
    """The config as dotted keys -> text (for mlflow's params)."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class TensorBoard:
    def __init__(self, run_dir: Path, cfg: dict, fold: int):
        self.folder, self.cfg, self.writer = Path(run_dir) / "tb", cfg, None

    def _open(self, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        if first_epoch <= 1:  # a fresh start (or --overwrite): an earlier run's events go
            for old in self.folder.glob("events.out.tfevents.*"):
                old.unlink()
        # purge_step: after --resume, the events of the epochs redone from first_epoch on are dropped
        self.writer = SummaryWriter(str(self.folder), purge_step=first_epoch if first_epoch > 1 else None)
        if first_epoch <= 1:
            import yaml

            self.writer.add_text("config", "    " + yaml.safe_dump(self.cfg, sort_keys=False).replace("\n", "\n    "))

    def epoch(self, epoch: int, row: dict) -> None:
        if self.writer is None:
            self._open(epoch)
        for key, value in numbers(row).items():
            self.writer.add_scalar(tag(key), value, epoch)
        self.writer.flush()

    def final(self, summary: dict) -> None:
        if self.writer is None:
            self._open(summary.get("epochs_run", 0) + 1)
        step = summary.get("epochs_run", 0)
        for key, value in numbers(summary.get("final_metrics") or {}).items():
            self.writer.add_scalar(f"oof/{key}", value, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, cfg: dict, fold: int):
        import wandb

        mode = os.environ.get("WANDB_MODE") or "offline"
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "strokekit", group=cfg["name"],
                              name=f"{cfg['name']}/fold{fold}", dir=str(run_dir), config=cfg, mode=mode,
                              job_type="train", reinit="create_new",
                              settings=wandb.Settings(console="off"))  # train.log keeps the console

    def epoch(self, epoch: int, row: dict) -> None:
        self.run.log({"epoch": epoch, **{tag(k): v for k, v in numbers(row).items()}}, step=epoch)

    def final(self, summary: dict) -> None:
        self.run.summary.update({f"oof/{k}": v for k, v in numbers(summary.get("final_metrics") or {}).items()})
        self.run.summary.update({"best_epoch": summary.get("best_epoch"), "best_metric": summary.get("best_metric")})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MLflow:
    def __init__(self, run_dir: Path, cfg: dict, fold: int):
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(cfg["name"])
        experiment = found.experiment_id if found is not None else self.client.create_experiment(
            cfg["name"], artifact_location=(run_dir / "mlartifacts").as_uri())
        self.run_id = self.client.create_run(experiment, run_name=f"fold{fold}",
                                             tags={"fold": str(fold)}).info.run_id
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in flat(cfg).items()])

    def epoch(self, epoch: int, row: dict) -> None:
        for key, value in numbers(row).items():
            self.client.log_metric(self.run_id, tag(key), value, step=epoch)

    def final(self, summary: dict) -> None:
        step = summary.get("epochs_run", 0)
        for key, value in numbers(summary.get("final_metrics") or {}).items():
            self.client.log_metric(self.run_id, f"oof/{key}", value, step=step)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


class Trackers:
    """The trackers of one fold: `epoch(epoch, row)` is train_fold's on_epoch_end, `final(summary)` after it.
    A context manager: the trackers are closed (marked failed on an exception) when the fold ends."""

    def __init__(self, names, run_dir, cfg: dict, fold: int):
        check_available(names)
        self.trackers = []
        try:
            for name in names:
                self.trackers.append(KINDS[name](Path(run_dir), cfg, fold))
        except BaseException:
            self.close(failed=True)
            raise

    def epoch(self, epoch: int, row: dict) -> None:
        for tracker in self.trackers:
            tracker.epoch(epoch, row)

    def final(self, summary: dict) -> None:
        for tracker in self.trackers:
            tracker.final(summary)

    def close(self, failed: bool = False) -> None:
        for tracker in self.trackers:
            tracker.close(failed)
        self.trackers = []

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)
