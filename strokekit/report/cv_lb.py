"""CV vs LB: each scored submission (score.py's `scores/<name>.json`, the offline leaderboard) beside the OOF
figures of the ensemble spec it was made from, with the submission's git commit and time.

The link: a score file names its prediction (`pred`: phase 1 the asama1.txt, phase 2 the mask folder); the
submission folder holds the manifest.json infer.py wrote, whose `spec` names the spec file and its sha256
(a model folder's submission: the spec it was exported from, `model_folders[...].exported_from[role]`).
The spec's `oof` block holds the CV figures ensemble.py measured and their 95 % bootstrap intervals at the
test set's size; the score file holds the LB figures and theirs. A row is flagged where the LB estimate
falls outside the CV interval (or, without a CV interval, the CV figure outside the LB interval): the two
disagree by more than the test set's sampling noise, so the OOF over-fits, the test differs, or the spec
changed (also flagged: its sha256 no longer matches the manifest's).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from strokekit.inference.manifest import ManifestError, read_manifest, sha256

# (name shown, spec interval key, score interval key) per phase; phase 2's CV key is the spec's metric
PHASE1_PAIRS = (("balanced_accuracy", "balanced_accuracy"), ("auc", "auc"), ("recall", "recall"),
                ("specificity", "specificity"), ("f1", "f1"))
SEG_SCORE_KEYS = {"dice": "dice_macro_imagewise_lesion_mean", "iou": "iou_macro_imagewise_lesion_mean",
                  "official_iou": "official_iou", "official_dice": "official_dice"}
COLUMNS = ("submission", "phase", "made", "commit", "spec", "members", "metric", "cv", "cv_low", "cv_high",
           "lb", "lb_low", "lb_high", "lb_minus_cv", "flag")


def expand_scores(paths) -> list[Path]:
    """Score JSON files; a folder stands for its *.json."""
    out = []
    for path in map(Path, paths):
        out += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return out


def submission_folder(score: dict, score_path: Path) -> Path | None:
    """The folder of the scored submission (where its manifest.json is), looked up as written, then from the
    score file's folder's parent (score.py ran in the project root, scores/ sits in it)."""
    pred = Path(str(score.get("pred", "")))
    folder = pred.parent if score.get("phase") == 1 else pred
    for candidate in (folder, score_path.resolve().parent.parent / folder):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def spec_of(manifest: dict) -> tuple[Path | None, str | None]:
    """(spec file, sha256 recorded at submission time); a model folder's submission gives the spec it was
    exported from."""
    spec = manifest.get("spec") or {}
    folder = spec.get("model_folder")
    if folder:
        exported = ((manifest.get("model_folders") or {}).get(folder) or {}).get("exported_from") or {}
        source = exported.get(spec.get("role")) or {}
        return (Path(source["path"]) if source.get("path") else None), source.get("sha256")
    return (Path(spec["path"]) if spec.get("path") else None), spec.get("sha256")


def read_submission(score_path: Path) -> dict | str:
    """What one score file and its submission's manifest say, or the reason it cannot be joined."""
    try:
        score = json.loads(score_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"unreadable ({err})"
    if not isinstance(score, dict) or score.get("phase") not in (1, 2):
        return "not a score file (score.py writes them: phase, pred, intervals)"
    folder = submission_folder(score, score_path)
    if folder is None:
        return f"no manifest.json beside its prediction {score.get('pred')!r} (infer.py writes one)"
    try:
        manifest = read_manifest(folder)
    except ManifestError as err:
        return str(err)
    spec_path, spec_sha = spec_of(manifest)
    git = manifest.get("git") or {}
    commit = (git.get("commit") or "")[:10] + ("+dirty" if git.get("dirty") else "") or "–"
    return {"score_path": score_path, "score": score, "folder": folder, "manifest": manifest,
            "spec_path": spec_path, "spec_sha256": spec_sha, "commit": commit, "made": str(manifest.get("time", "–")),
            "name": folder.name}


def load_spec(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return spec if isinstance(spec, dict) and isinstance(spec.get("oof"), dict) else None


def figure_pairs(spec: dict, score: dict) -> list[tuple[str, dict | None, float | None, dict | None]]:
    """(metric, CV interval or None, CV estimate, LB interval or None) for the figures both sides hold."""
    lb = score.get("intervals") or {}
    oof = spec["oof"]
    pairs = []
    if score["phase"] == 1:
        cv = oof.get("intervals") or {}
        at = (spec.get("threshold") or {}).get("oof") or {}
        for name, key in PHASE1_PAIRS:
            lb_value = lb.get(key) or _point(score.get(key))
            estimate = cv[key]["estimate"] if key in cv else at.get(key, oof.get("ensemble") if key == "auc" else None)
            if lb_value is not None and estimate is not None:
                pairs.append((name, cv.get(key), float(estimate), lb_value))
        return pairs
    metric = str(oof.get("metric", "dice")).split()[0]
    for name, estimate in {metric: oof.get("postprocessed"), **(oof.get("objectives") or {})}.items():
        key = SEG_SCORE_KEYS.get(name)
        if key is None or estimate is None or any(p[0] == key for p in pairs):
            continue
        cv = oof.get("postprocessed_interval") if name == metric else None
        lb_value = lb.get(key) or _point(_official(score, key))
        if lb_value is not None:
            pairs.append((key, cv, float(estimate), lb_value))
    return pairs


def _point(value) -> dict | None:
    return None if value is None else {"estimate": float(value)}


def _official(score: dict, key: str):
    if key.startswith("official_"):
        return (score.get("official") or {}).get("mean_imagewise", {}).get(key.split("_", 1)[1])
    return (score.get("strict") or {}).get(key)


def flag(cv: dict | None, estimate: float, lb: dict) -> str:
    """Where CV and LB disagree beyond the bootstrap noise: '' when they agree or cannot be told apart."""
    if cv and "low" in cv:
        if lb["estimate"] < cv["low"]:
            return "LB below CV interval"
        if lb["estimate"] > cv["high"]:
            return "LB above CV interval"
        return ""
    if "low" in lb and not lb["low"] <= estimate <= lb["high"]:
        return "CV outside LB interval"
    return ""


def rows(submissions: list[dict], member_figures: dict[str, str] | None = None) -> list[dict]:
    """One row per (submission, metric): CV and LB with their intervals, LB - CV and the flag."""
    out = []
    for sub in submissions:
        spec = load_spec(sub["spec_path"])
        base = {"submission": sub["name"], "phase": sub["score"]["phase"], "made": sub["made"],
                "commit": sub["commit"], "spec": sub["spec_path"].stem if sub["spec_path"] else "–"}
        if spec is None:
            out.append({**base, "members": "–", "metric": "–", "flag": f"spec {sub['spec_path']} not found"})
            continue
        changed = sub["spec_sha256"] and sha256(sub["spec_path"]) != sub["spec_sha256"]
        names = [m["name"] for m in spec.get("members", [])]
        base["members"] = ", ".join(f"{n} ({member_figures[n]})" if member_figures and n in member_figures else n
                                    for n in names)
        for metric, cv, estimate, lb in figure_pairs(spec, sub["score"]):
            note = flag(cv, estimate, lb)
            if changed:
                note = "; ".join(filter(None, [note, "spec changed since the submission"]))
            out.append({**base, "metric": metric, "cv": estimate, "cv_low": (cv or {}).get("low"),
                        "cv_high": (cv or {}).get("high"), "lb": lb["estimate"], "lb_low": lb.get("low"),
                        "lb_high": lb.get("high"), "lb_minus_cv": lb["estimate"] - estimate, "flag": note})
    return out


def interval_cell(value, low, high) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def markdown(table: list[dict]) -> list[str]:
    """The CV vs LB section of leaderboard.md."""
    lines = ["## CV vs LB (scored submissions)", "",
             "CV: the spec's OOF figure (ensemble.py) with its 95 % bootstrap interval at the test set's size; LB: "
             "score.py's figure on the test set with its 95 % interval. `flag` marks an LB outside the CV interval "
             "(or a CV outside the LB interval where the spec has none).", "",
             "| submission | phase | made | commit | spec (members: OOF) | metric | CV [95 %] | LB [95 %] | "
             "LB − CV | flag |", "|" + "---|" * 10]
    for r in table:
        delta = r.get("lb_minus_cv")
        lines.append("| " + " | ".join([r["submission"], str(r["phase"]), str(r["made"]), r["commit"],
                                         f"{r['spec']} ({r['members']})", r["metric"],
                                         interval_cell(r.get("cv"), r.get("cv_low"), r.get("cv_high")),
                                         interval_cell(r.get("lb"), r.get("lb_low"), r.get("lb_high")),
                                         "–" if delta is None else f"{delta:+.4f}",
                                         f"**{r['flag']}**" if r.get("flag") else ""]) + " |")
    return lines + [""]
