"""Every config's out-of-fold figures, per task, on one table, with the chosen ensembles' beside them.

A config's figures come from its folds' summary.json (`final_metrics`: the best checkpoint re-run on the fold's
validation images, i.e. its OOF predictions), shown as mean ± std over folds (std with ddof=1; "–" for one
fold); classifiers also get `pooled_auc`, the AUC of all folds' oof.csv together, the figure an ensemble spec
reports. An ensemble's figures are read from its spec file (ensemble.py wrote them on OOF data). Unfinished or
pruned folds are left out and listed. Scored submissions (score.py's JSON) are joined with the spec they were
made from: CV beside LB (cv_lb.py). Every run read gets its merged `oof.csv` / `oof.npz` (merged_oof.py).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from strokekit.ensembling import merged_oof, selection
from strokekit.report import cv_lb, figures
from strokekit.report.evaluate import ReportError
from strokekit.vocabulary import TASKS

TITLES = {"stroke": "stroke (phase 1: stroke vs no stroke)", "type": "type (ischemic vs hemorrhagic)",
          "seg": "seg (phase 2: lesion masks)"}
CLASSIFIER_COLUMNS = ("auc", "pooled_auc", "f1_at_best", "recall_at_best", "precision_at_best",
                      "specificity_at_best", "balanced_accuracy_at_best")
SEG_COLUMNS = ("dice_macro_imagewise_lesion_mean", "iou_macro_imagewise_lesion_mean", "dice_micro_lesion_mean",
               "iou_micro_lesion_mean", "dice_macro_imagewise_any_lesion")
COLUMNS = {"stroke": CLASSIFIER_COLUMNS, "type": CLASSIFIER_COLUMNS, "seg": SEG_COLUMNS}
THRESHOLD_COLUMNS = ("recall", "precision", "f1", "specificity", "balanced_accuracy")


@dataclass
class RunFigures:
    name: str
    task: str
    model: str
    path: Path
    folds: dict[int, dict] = field(default_factory=dict)   # fold -> final_metrics
    pooled: dict[str, float] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


def expand_run_dirs(paths) -> list[Path]:
    """Run folders (holding fold<k>/); a folder of run folders (e.g. runs/) stands for all of them."""
    out = []
    for path in map(Path, paths):
        if _fold_dirs(path) or not path.is_dir():
            out.append(path)
        else:
            out += [child for child in sorted(path.iterdir()) if _fold_dirs(child)] or [path]
    return out


def _fold_dirs(run_dir: Path) -> list[Path]:
    dirs = [d for d in run_dir.glob("fold*") if d.is_dir() and d.name[4:].isdigit()]
    return sorted(dirs, key=lambda d: int(d.name[4:]))


def read_run(run_dir: Path) -> RunFigures | str:
    """The run's finished folds, or the reason it has none."""
    if not run_dir.is_dir():
        return "not a folder"
    figures, left_out = None, []
    for fold_dir in _fold_dirs(run_dir):
        summary_path = fold_dir / "summary.json"
        if not summary_path.is_file():
            left_out.append(f"{fold_dir.name} ({'pruned by tune.py' if (fold_dir / 'pruned').exists() else 'unfinished'})")
            continue
        summary = _read_summary(summary_path)
        if figures is None:
            figures = RunFigures(run_dir.name, summary["task"], summary["model"], run_dir)
        elif summary["task"] != figures.task:
            raise ReportError(f"{run_dir}: folds of tasks {figures.task} and {summary['task']}; one run is one task")
        figures.folds[summary["fold"]] = summary["final_metrics"]
    if figures is None:
        return "no finished fold (fold<k>/summary.json)" + (f": {', '.join(left_out)}" if left_out else "")
    figures.left_out = left_out
    merged_oof.refresh(run_dir)
    if figures.task != "seg":
        oof = selection.load_oof(run_dir)
        oof = oof[oof["fold"].isin(list(figures.folds))]
        figures.pooled["pooled_auc"] = selection.classifier_score(oof["target"], oof["prob"], "auc")
    return figures


def _read_summary(path: Path) -> dict:
    """A fold's summary.json (from train.py): task, model, fold and final_metrics, or ReportError naming it."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        return {"task": summary["task"], "model": summary["model"], "fold": int(summary["fold"]),
                "final_metrics": dict(summary["final_metrics"])}
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable, not JSON, or fields missing
        raise ReportError(f"{path}: not a summary.json as train.py writes it "
                          f"({type(err).__name__}: {err})") from None


def fold_table(runs: list[RunFigures]) -> pd.DataFrame:
    """One row per (config, fold): task, config, model, fold and every final metric."""
    rows = [{"task": r.task, "config": r.name, "model": r.model, "fold": fold, **metrics}
            for r in runs for fold, metrics in sorted(r.folds.items())]
    return pd.DataFrame(rows)


def summary_table(runs: list[RunFigures], task: str) -> pd.DataFrame:
    """Per config of one task: model, folds, and `<metric>_mean` / `<metric>_std` for the task's columns."""
    rows = []
    for run in (r for r in runs if r.task == task):
        row = {"config": run.name, "model": run.model, "folds": len(run.folds)}
        for column in COLUMNS[task]:
            if column in run.pooled:
                row[f"{column}_mean"], row[f"{column}_std"] = run.pooled[column], math.nan
                continue
            values = np.asarray([m.get(column, math.nan) for m in run.folds.values()], dtype=float)
            row[f"{column}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            row[f"{column}_std"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(f"{COLUMNS[task][0]}_mean", ascending=False, na_position="last", kind="stable")
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- ensembles


def read_ensemble(path: Path) -> list[dict] | str:
    """Rows for the leaderboard from one ensemble spec (a seg spec with a seg_classifier gives two)."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        return f"unreadable ({err})"
    if not isinstance(spec, dict) or spec.get("task") not in TASKS or "oof" not in spec:
        return "not an ensemble spec (ensemble.py writes them: task, members, oof)"
    try:
        return _ensemble_rows(path, spec)
    except (KeyError, TypeError, ValueError) as err:  # a field missing or of another shape
        return f"not an ensemble spec as ensemble.py writes it ({type(err).__name__}: {err})"


def _ensemble_rows(path: Path, spec: dict) -> list[dict]:
    members = ", ".join(m["name"] for m in spec.get("members", []))
    oof = spec["oof"]
    row = {"ensemble": path.stem, "task": spec["task"], "blend": spec.get("blend"), "members": members,
           "metric": str(oof["metric"]).split()[0], "best_member": oof.get("best_member")}
    if spec["task"] != "seg":
        row["oof"] = oof["ensemble"]
        row.update(_at_threshold(spec["threshold"]["value"], spec["threshold"]["oof"]))
        return [row]
    row.update(oof=oof["postprocessed"], before_postprocess=oof.get("ensemble_neutral_postprocess"),
               **{f"{k}": v for k, v in oof.get("per_class", {}).items()})
    rows = [row]
    clf = spec.get("seg_classifier")
    if clf:
        found = clf["threshold"]["oof"]
        rows.append({"ensemble": f"{path.stem} (seg-based)", "task": clf["target"], "blend": f"seg:{clf['feature']}",
                     "members": members, "metric": "auc", "oof": found.get("auc"), "best_member": None,
                     **_at_threshold(clf["threshold"]["threshold"], found)})
    return rows


def _at_threshold(threshold: float, found: dict) -> dict:
    return {"threshold": float(threshold), **{k: found.get(k) for k in THRESHOLD_COLUMNS}}


# --------------------------------------------------------------------------- Markdown and chart


def _cell(value, std=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not isinstance(value, (float, np.floating)):
        return str(value)
    return f"{value:.4f}" + ("" if std is None or math.isnan(std) else f" ± {std:.4f}")  # one fold: no std


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def task_section(task: str, runs: list[RunFigures], ensembles: list[dict]) -> list[str]:
    lines = [f"## {TITLES[task]}", ""]
    table = summary_table(runs, task)
    if not table.empty:
        columns = COLUMNS[task]
        lines += ["Configs: OOF metrics, mean ± std over folds.", ""]
        lines += _markdown(["config", "model", "folds", *columns],
                           [[r["config"], r["model"], str(r["folds"]),
                             *(_cell(r[f"{c}_mean"], None if c == "pooled_auc" else r[f"{c}_std"]) for c in columns)]
                            for _, r in table.iterrows()])
        lines += ["", f"Per fold, {columns[0]}:", ""]
        by_run = {r.name: r for r in runs}
        all_folds = sorted({f for r in runs if r.task == task for f in r.folds})
        lines += _markdown(["config", *(f"fold{f}" for f in all_folds)],
                           [[name, *(_cell(by_run[name].folds.get(f, {}).get(columns[0])) for f in all_folds)]
                            for name in table["config"]])
        lines.append("")
    mine = [e for e in ensembles if e["task"] == task]
    if mine:
        if task == "seg":
            header = ["ensemble", "blend", "members", "metric", "OOF post-processed", "before", "ischemic",
                      "hemorrhagic", "best member"]
            keys = ["ensemble", "blend", "members", "metric", "oof", "before_postprocess", "ischemic",
                    "hemorrhagic", "best_member"]
        else:
            header = ["ensemble", "blend", "members", "metric", "OOF", "best member", "threshold",
                      *THRESHOLD_COLUMNS]
            keys = ["ensemble", "blend", "members", "metric", "oof", "best_member", "threshold", *THRESHOLD_COLUMNS]
        lines.append("Ensembles (figures from the spec files, on all OOF images together"
                     + (", recall ... at the spec's threshold):" if task != "seg" else "):"))
        lines.append("")
        lines += _markdown(header, [[_cell(e.get(k)) for k in keys] for e in mine]) + [""]
    return lines


def render_markdown(runs: list[RunFigures], ensembles: list[dict], skipped: list[str],
                    cv_vs_lb: list[dict] = ()) -> str:
    lines = ["# Leaderboard", "",
             "OOF = out-of-fold: each fold's best checkpoint on the images it did not train on. Config figures "
             "are mean ± std (ddof=1) over finished folds of summary.json's final metrics; `pooled_auc` joins all "
             "folds' oof.csv; `*_at_best` use each fold's own best-F1 threshold (optimistic). Seg figures are strict "
             "per-class Dice / IoU on lesion slices (macro_imagewise: per image, then averaged).", ""]
    for task in TASKS:
        if any(r.task == task for r in runs) or any(e["task"] == task for e in ensembles):
            lines += task_section(task, runs, ensembles)
    if cv_vs_lb:
        lines += cv_lb.markdown(cv_vs_lb)
    if skipped:
        lines += ["## Left out", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)


def plot(runs: list[RunFigures], ensembles: list[dict], path: Path) -> Path:
    """leaderboard.png: per task one axis and one metric, configs and ensembles measured alike (classifiers:
    the AUC of all OOF images together; seg: strict per-image Dice, lesion mean, before post-processing),
    each config's folds as dots."""
    tasks = [t for t in TASKS if any(r.task == t for r in runs) or any(e["task"] == t for e in ensembles)]
    return figures.save(figures.leaderboard_bars({t: _bars(t, runs, ensembles) for t in tasks},
                                                 {t: CHART_METRIC[t != "seg"] for t in tasks}), path)


CHART_METRIC = {True: "pooled AUC (all OOF images)", False: "Dice per image, lesion mean (no post-processing)"}


def _bars(task: str, runs: list[RunFigures], ensembles: list[dict]) -> list[tuple]:
    """(label, value, per-fold values, colour) rows: configs blue, ensembles orange."""
    fold_metric = "auc" if task != "seg" else COLUMNS["seg"][0]
    bars = []
    for _, row in summary_table(runs, task).iterrows():
        run = next(r for r in runs if r.name == row["config"])
        folds = [float(m[fold_metric]) for m in run.folds.values() if m.get(fold_metric) is not None]
        value = run.pooled.get("pooled_auc") if task != "seg" else row[f"{fold_metric}_mean"]
        bars.append((run.name, float(value) if value is not None else math.nan, folds, "tab:blue"))
    for e in ensembles:  # the same metric as the configs' bars: the AUC, or the Dice before post-processing
        if e["task"] != task:
            continue
        value = e.get("oof") if task != "seg" else e.get("before_postprocess")
        if (e["metric"] == "auc" if task != "seg" else e["metric"] == "dice") and value is not None:
            bars.append((e["ensemble"], float(value), [], "tab:orange"))
    return [b for b in bars if not math.isnan(b[1])]


def member_figures(runs: list[RunFigures]) -> dict[str, str]:
    """Each config's headline OOF figure, as shown beside a submission's members: 'auc 0.912'."""
    out = {}
    for run in runs:
        column = "pooled_auc" if run.task != "seg" else COLUMNS["seg"][0]
        value = run.pooled.get(column)
        if value is None:
            values = [m.get(column) for m in run.folds.values() if m.get(column) is not None]
            value = float(np.mean(values)) if values else None
        if value is not None and not math.isnan(value):
            out[run.name] = f"{'auc' if run.task != 'seg' else 'dice'} {value:.3f}"
    return out


def build(run_paths, ensemble_paths=(), out: str | os.PathLike | None = None, score_paths=()) -> dict:
    """Read runs, ensemble specs and score files; write leaderboard.md / .png / .csv (and cv_vs_lb.csv with
    scores) into `out`; returns what was read."""
    runs, skipped = [], []
    for path in expand_run_dirs(run_paths):
        found = read_run(path)
        if isinstance(found, str):
            skipped.append(f"{path}: {found}")
            continue
        runs.append(found)
        skipped += [f"{path}/{fold}" for fold in found.left_out]
    ensembles = []
    for path in map(Path, ensemble_paths):
        found = read_ensemble(path)
        if isinstance(found, str):
            skipped.append(f"{path}: {found}")
        else:
            ensembles += found
    submissions = []
    for path in cv_lb.expand_scores(score_paths):
        found = cv_lb.read_submission(path)
        if isinstance(found, str):
            skipped.append(f"{path}: {found}")
        else:
            submissions.append(found)
    if not runs and not ensembles and not submissions:
        raise ReportError("nothing to rank: no run folder with a finished fold, no ensemble spec and no score "
                          "file; " + "; ".join(skipped))
    joined = cv_lb.rows(submissions, member_figures(runs))
    markdown = render_markdown(runs, ensembles, skipped, joined)
    result = {"runs": runs, "ensembles": ensembles, "skipped": skipped, "markdown": markdown, "cv_vs_lb": joined}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "leaderboard.md").write_text(markdown + "\n", encoding="utf-8")
        fold_table(runs).to_csv(out / "leaderboard.csv", index=False)
        if joined:
            pd.DataFrame(joined, columns=list(cv_lb.COLUMNS)).to_csv(out / "cv_vs_lb.csv", index=False)
        result["png"] = plot(runs, ensembles, out / "leaderboard.png") if runs or ensembles else None
    return result
