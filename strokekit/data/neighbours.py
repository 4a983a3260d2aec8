"""2.5D input (config `neighbours: k`): each slice fed with the k slices either side of it in its series.

Series order. Slices are grouped by SeriesInstanceUID (the index's `series_uid`) and ordered by the first of
three header tags that orders the series: ImagePositionPatient along the slice normal (`slice_position`),
else InstanceNumber, else SliceLocation. A tag orders a series when every slice of it that carries any of
the three carries that tag, and no two of them share its value (a tie: two slices at one place, e.g. two
reconstructions in one series, so the next tag is tried). Slices carrying none of the three are left out of
the order; a series no tag orders is not ordered at all.

Neighbours. Consecutive slices of the order are neighbours when their step is at most MAX_STEP times the
series' smallest step: a slice the data set lacks leaves a gap, and the slices either side of it are not
neighbours. Channels are the slices at offsets -k .. k (ascending along the order), each in the config's
channels (its HU windows for DICOM, one grey channel for PNG): in_chans = channels per slice x (2k + 1).

Fallback (declared, counted). A neighbour that is not there is replaced by the nearest slice towards the
centre that is (k = 1: the slice itself, repeated). Each replaced offset is counted under its reason:
`edge` (the series ends), `gap` (the next slice is missing from the data set), `no_order` (the slice or its
series has no usable order tags), `no_series` (no DICOM header with a SeriesInstanceUID: a PNG-only image).
train.py logs the counts and writes them to fold<k>/summary.json (`neighbours`).

Where neighbours come from: a pool of index rows. Training takes the whole index (less the bad inputs left
out), so a validation slice's neighbours are any slice of its series (folds keep a patient together, so
they are in its fold); infer.py and the Predictor take the images given together (a test split, a list of
paths, a DataFrame of index rows). Neighbours are inputs only: their labels are never read.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd

from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import read_dicom_header
from strokekit.data.index import ORDER_COLUMNS
from strokekit.data.readers import load_image
from strokekit.errors import UserError

REASONS = ("edge", "gap", "no_order", "no_series")
MAX_STEP = 1.5  # consecutive slices farther apart than this times the series' smallest step are not neighbours
FILE_KEYS = ("image_id", "png", "dicom")


class NeighbourError(UserError, ValueError):
    """Neighbouring slices asked for where they cannot be given (an HU array, rows never prepared)."""


def slice_channels(cfg: dict) -> int:
    """Channels of one slice: the HU windows for DICOM, one grey channel for PNG."""
    return len(cfg["windows"]) if cfg["image_source"] == "dicom" else 1


def neighbour_count(cfg: dict) -> int:
    return int(cfg.get("neighbours") or 0)  # checkpoints from before the key: no neighbours


# ---- series order

def order_facts(rows: pd.DataFrame) -> pd.DataFrame:
    """`series_uid` and the three order tags (float, NaN when unknown) per row, from the index's columns, or
    read from each row's DICOM header where the rows do not carry them (paths given to the Predictor)."""
    if all(col in rows.columns for col in ["series_uid", *ORDER_COLUMNS]):
        out = pd.DataFrame({"series_uid": rows["series_uid"].fillna("").astype(str)}, index=rows.index)
        for col in ORDER_COLUMNS:
            out[col] = pd.to_numeric(rows[col], errors="coerce")
        return out
    records = []
    for row in rows.to_dict("records"):
        dicom = row.get("dicom")
        header = None
        if isinstance(dicom, str) and dicom:
            try:
                header = read_dicom_header(dicom)
            except BadInputError:
                header = None  # named by the reader when the image itself is read
        records.append({"series_uid": header["SeriesInstanceUID"] if header else "",
                        **{col: header[col] if header else math.nan for col in ORDER_COLUMNS}})
    return pd.DataFrame.from_records(records, index=rows.index, columns=["series_uid", *ORDER_COLUMNS])


def series_order(facts: pd.DataFrame) -> tuple[list, np.ndarray, list]:
    """(row labels in order, their values of the ordering tag, row labels left out) of one series' facts."""
    tags = facts[ORDER_COLUMNS]
    tagged = facts.index[tags.notna().any(axis=1)]
    untagged = list(facts.index[~tags.notna().any(axis=1)])
    for col in ORDER_COLUMNS:
        values = facts.loc[tagged, col]
        if len(values) and values.notna().all() and not values.duplicated().any():
            values = values.sort_values(kind="stable")
            return list(values.index), values.to_numpy(dtype=float), untagged
    return [], np.zeros(0), list(facts.index)


def neighbour_plan(pool: pd.DataFrame, k: int) -> dict[int, tuple[tuple[int, ...], tuple[str, ...]]]:
    """{image_id: (the 2k + 1 image ids fed as offsets -k .. k after the fallback, the reason of each
    replaced offset)} for every row of `pool` (see the module docstring)."""
    facts = order_facts(pool)
    ids = pool["image_id"].astype(int)
    plan = {}
    for label in facts.index[facts["series_uid"] == ""]:
        plan[int(ids[label])] = ((int(ids[label]),) * (2 * k + 1), ("no_series",) * (2 * k))
    for _, group in facts[facts["series_uid"] != ""].groupby("series_uid", sort=False):
        chain, values, left_out = series_order(group)
        for label in left_out:
            plan[int(ids[label])] = ((int(ids[label]),) * (2 * k + 1), ("no_order",) * (2 * k))
        steps = np.diff(values)
        linked = steps <= MAX_STEP * steps.min() if len(steps) else steps.astype(bool)
        for r, label in enumerate(chain):
            sides, reasons = {}, []
            for side in (-1, 1):
                at, taken = r, []
                for _ in range(k):
                    step = at + side
                    if not 0 <= step < len(chain):
                        reasons.append("edge")
                    elif not linked[min(at, step)]:
                        reasons.append("gap")
                    else:
                        at = step
                    taken.append(int(ids[chain[at]]))
                sides[side] = taken
            plan[int(ids[label])] = (tuple(sides[-1][::-1]) + (int(ids[label]),) + tuple(sides[1]), tuple(reasons))
    return plan


def attach_neighbours(rows: pd.DataFrame, k: int, pool: pd.DataFrame | None = None) -> pd.DataFrame:
    """`rows` with two columns more: `neighbours` (per row, the files of the 2k + 1 slices fed, offsets
    -k .. k, each {image_id, png, dicom}) and `neighbour_fallbacks` (the reason of each replaced offset).
    Neighbours are looked up in `pool` (default: the rows themselves); rows missing from it are added."""
    rows = rows.copy()
    pool = rows if pool is None else pd.concat([pool, rows[~rows["image_id"].isin(pool["image_id"])]],
                                               ignore_index=True)
    pool = pool.reset_index(drop=True)
    plan = neighbour_plan(pool, k)
    files = {int(r["image_id"]): {key: _text(r.get(key)) if key != "image_id" else int(r[key]) for key in FILE_KEYS}
             for r in pool.to_dict("records")}
    rows["neighbours"] = [tuple(files[i] for i in plan[int(i)][0]) for i in rows["image_id"]]
    rows["neighbour_fallbacks"] = [plan[int(i)][1] for i in rows["image_id"]]
    return rows


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def fallback_counts(rows) -> dict:
    """{slices, offsets (neighbours asked for), replaced, and the count of each reason} over prepared rows."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    reasons = [reason for row in records for reason in row.get("neighbour_fallbacks", ())]
    offsets = sum(len(row.get("neighbours", ())) - 1 for row in records)
    return {"slices": len(records), "offsets": offsets, "replaced": len(reasons),
            **{reason: reasons.count(reason) for reason in REASONS}}


def describe_counts(counts: dict) -> str:
    """One log line of fallback_counts."""
    share = counts["replaced"] / counts["offsets"] if counts["offsets"] else 0.0
    parts = ", ".join(f"{counts[r]} {r}" for r in REASONS if counts[r])
    return (f"neighbours: {counts['replaced']} of {counts['offsets']} neighbouring slices ({share:.0%}) repeat a "
            f"nearer slice" + (f" ({parts})" if parts else ""))


# ---- reading

def stack_slices(row: dict, cfg: dict, read_one) -> np.ndarray:
    """HxWxC uint8 of the slices at offsets -k .. k (k = cfg's neighbours), each read by `read_one(row, cfg)`
    with in_chans = its own channels; a neighbour of another size than the slice is resized to it (area)."""
    k = neighbour_count(cfg)
    entries = row.get("neighbours")
    if entries is None or isinstance(entries, float):
        raise NeighbourError(f"image {row.get('image_id')}: the model reads neighbouring slices (neighbours: {k}) "
                             "but no neighbours were looked up for it (data/neighbours.attach_neighbours)")
    middle = len(entries) // 2
    if middle < k:
        raise NeighbourError(f"image {row.get('image_id')}: {middle} neighbours looked up, the model needs {k}")
    one = {**cfg, "in_chans": slice_channels(cfg)}
    centre = read_one(row, one)
    parts = []
    for entry in entries[middle - k:middle + k + 1]:
        if int(entry["image_id"]) == int(row["image_id"]):
            parts.append(centre)
            continue
        image = read_one({"png_window": row.get("png_window"), **entry}, one)
        if image.shape[:2] != centre.shape[:2]:
            image = cv2.resize(image, centre.shape[1::-1], interpolation=cv2.INTER_AREA).reshape(
                *centre.shape[:2], image.shape[-1])
        parts.append(image)
    return np.ascontiguousarray(np.concatenate(parts, axis=-1))


def load_input(row: dict, cfg: dict) -> np.ndarray:
    """The model input of one index row as HxWxC uint8: load_image, with its neighbours when cfg asks."""
    return stack_slices(row, cfg, load_image) if neighbour_count(cfg) else load_image(row, cfg)


def source_files(row: dict, cfg: dict) -> list:
    """The files an input is made of (the slice's, then each neighbour's), for the preprocessing cache's key."""
    key = "dicom" if cfg["image_source"] == "dicom" else "png"
    own = row.get(key)
    k = neighbour_count(cfg)
    if not k:
        return [own]
    entries = row.get("neighbours") or ()
    middle = len(entries) // 2
    return [own] + [entry.get(key) for entry in entries[middle - k:middle + k + 1]]


def summary_counts(cfg: dict, *datasets) -> dict:
    """{"neighbours": fallback_counts over the datasets' rows} for a fold's summary.json; {} without neighbours."""
    if not neighbour_count(cfg):
        return {}
    return {"neighbours": fallback_counts([row for dataset in datasets for row in dataset.rows])}
