"""One merged OOF file per run: `runs/<config>/oof.csv` (classifiers) or `oof.npz` (segmenters) beside the
per-fold `fold<k>/oof.*`, holding every fold's rows with their `fold` column, sorted by image id.

The per-fold files stay the source: `selection.fold_dirs` reads `fold<k>/` whenever it has them, so a merged
file never hides a re-trained or added fold; the merged one is read only where a run folder holds no fold
folders (one shared file, e.g. a Kaggle dataset of OOF predictions). It is written on read, by leaderboard.py
and report.py (`refresh`), never by training: a fold cannot know whether the others are done or about to be
re-trained. `refresh` rewrites it when its folds differ from the fold files' or any fold file is newer;
the write is atomic (a kill leaves the previous file or the new one).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_atomic
from strokekit.ensembling.selection import OOF_CSV, OOF_NPZ, load_oof


def fold_files(run_dir: Path) -> list[Path]:
    """The run's per-fold OOF files (`fold<k>/oof.csv | oof.npz`), by k."""
    dirs = [d for d in run_dir.glob("fold*") if d.is_dir() and d.name[4:].isdigit()]
    return [f for d in sorted(dirs, key=lambda d: int(d.name[4:])) for f in (d / OOF_CSV, d / OOF_NPZ)
            if f.is_file()]


def merged_path(run_dir: str | os.PathLike) -> Path | None:
    """Where the run's merged OOF goes (oof.csv or oof.npz by its folds' kind); None without fold files."""
    files = fold_files(Path(run_dir))
    return Path(run_dir) / files[0].name if files else None


def is_current(run_dir: str | os.PathLike) -> bool:
    """The merged file exists, is no older than any fold file and holds exactly their folds."""
    run_dir = Path(run_dir)
    files, merged = fold_files(run_dir), merged_path(run_dir)
    if merged is None or not merged.is_file():
        return False
    if merged.stat().st_mtime_ns < max(f.stat().st_mtime_ns for f in files):
        return False
    folds = {int(f.parent.name[4:]) for f in files}
    try:
        if merged.suffix == ".csv":
            held = set(pd.read_csv(merged, usecols=["fold"])["fold"].astype(int))
        else:
            with np.load(merged) as data:
                held = set(np.asarray(data["fold"]).astype(int).tolist())
    except (OSError, ValueError, KeyError):  # damaged or foreign: write it again
        return False
    return held == folds


def refresh(run_dir: str | os.PathLike) -> Path | None:
    """Write (or leave, when current) the run's merged OOF file; its path, or None for a run without folds."""
    run_dir = Path(run_dir)
    merged = merged_path(run_dir)
    if merged is None or is_current(run_dir):
        return merged
    oof = load_oof(run_dir)  # reads fold<k>/ (selection.fold_dirs prefers them), checks overlaps
    if isinstance(oof, pd.DataFrame):
        write_atomic(merged, lambda f: oof.to_csv(f, index=False), text=True)
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **oof)
        write_atomic(merged, lambda f: f.write(buffer.getvalue()))
    return merged
