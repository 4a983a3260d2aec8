"""A self-contained model folder: ensemble specs and their checkpoints, exported to run anywhere.

    models/<name>/
      model.json            format, kit version, one ensemble per role (members: architecture, input
                            preprocessing, blend weight, checkpoints; blend, TTA, thresholds, post-processing)
                            and the sha256 of every weights file
      weights/*.safetensors one per checkpoint (the weights inference uses: EMA when the run kept one)
      manifest.json         provenance (manifest.py) and the sha256 of every file, model.json included

Roles: `stroke` gives phase 1 (a stroke spec, or a seg spec whose seg_classifier targets stroke), `seg`
phase 2's masks (a seg spec), `type` the stroke type (a type spec). No pickle anywhere, no path out of
the folder: it works wherever it is copied. `read_model_folder` refuses a folder whose files do not
match their recorded hashes (a folder without its manifest.json too), as export.py --verify does; each
role comes back as a spec dict EnsemblePredictor runs like a YAML spec. The hashes are integrity checks,
not signatures.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from strokekit import __version__
from strokekit.atomic import write_atomic, write_json
from strokekit.errors import OutputExistsError
from strokekit.locks import FolderLock
from strokekit.models.checkpoint import read_checkpoint
from strokekit.ensembling.spec import SpecError, read_spec, validate_spec
from strokekit.inference.manifest import (MANIFEST, read_manifest, sha256, training_data, verify_files,
                                          write_manifest)
from strokekit.models.weights import WeightsError, strip_prefixes

FORMAT = "strokekit-model-v1"
MODEL_JSON = "model.json"
ROLES = ("stroke", "seg", "type")
INPUT_KEYS = ("image_source", "windows", "in_chans", "img_size", "mean", "std", "neighbours")  # neighbours: 2.5D
# config keys naming files of the training machine: not needed to run, so not carried into model.json
MACHINE_PATH_KEYS = ("data", "folds", "runs_dir", "cache_dir", "weights")
SPEC_DROP = ("path", "format", "created", "kit_version", "members")


class ModelFolderError(SpecError):
    """A model folder that cannot be run as it is: missing, malformed or changed files (named)."""


def spec_role(spec: dict) -> str:
    """Which question a spec answers: stroke (phase 1), seg (phase-2 masks) or type."""
    if spec["task"] == "seg":
        return "stroke" if (spec.get("seg_classifier") or {}).get("target") == "stroke" else "seg"
    return spec["task"]


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder (checked when read), or a model folder's model.json named directly."""
    path = Path(path)
    return path.is_dir() or (path.name == MODEL_JSON and path.is_file())


# --------------------------------------------------------------------------- export


def export_model(spec_paths: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False,
                 allow_outside: bool = False, command: list[str] | None = None) -> Path:
    """Write the model folder of one spec per role; returns the folder. An existing folder needs overwrite.
    One export per folder at a time: `<parent>/.<name>.lock` is held meanwhile (strokekit/locks.py)."""
    with FolderLock(out, what="export", beside=True):  # beside: the folder itself is swapped in whole
        return _export_model(spec_paths, Path(out), overwrite, allow_outside, command)


def _export_model(spec_paths, out: Path, overwrite: bool, allow_outside: bool, command) -> Path:
    specs = [read_spec(p, allow_outside) for p in spec_paths]
    roles = [spec_role(s) for s in specs]
    for role in set(roles):
        if roles.count(role) > 1:
            raise ModelFolderError(f"two specs answer the same role {role!r} "
                                   f"({', '.join(str(p) for p, r in zip(spec_paths, roles) if r == role)}); "
                                   "export one spec per role (stroke, seg, type)")
    _check_out(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")  # built aside, renamed into place when complete
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "weights").mkdir(parents=True)
        _write_folder(tmp, out.resolve().name, roles, specs, command)
        read_model_folder(tmp)  # what was written loads and verifies
        if out.exists():
            shutil.rmtree(out)  # an empty folder, or a model folder --overwrite replaces (_check_out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; --out names the model folder to write")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace the model folder there")
        if not (out / MODEL_JSON).is_file():
            raise OutputExistsError(f"{out} holds files but no {MODEL_JSON}; --overwrite only replaces a model "
                                    "folder: choose another --out")


def _write_folder(out: Path, name: str, roles: list[str], specs: list[dict], command) -> None:
    """weights/*.safetensors, model.json and manifest.json of `specs` into the (empty) folder `out`."""
    exported: dict[str, str] = {}  # source checkpoint -> file in the folder (two roles may share checkpoints)
    model = {"format": FORMAT, "kit_version": __version__, "name": name,
             "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "ensembles": {}}
    provenance = {"specs": {}, "checkpoints": []}
    for role, spec in zip(roles, specs):
        model["ensembles"][role] = _export_ensemble(role, spec, out, exported, provenance["checkpoints"])
        provenance["specs"][role] = {"path": spec["path"], "sha256": sha256(spec["path"])}
    model["files"] = {file: sha256(out / file) for file in sorted(set(exported.values()))}
    write_json(out / MODEL_JSON, model)
    configs = [c["config"] for c in provenance["checkpoints"]]
    write_manifest(out, {"kind": "model_folder", "exported_from": provenance["specs"],
                         "checkpoints": provenance["checkpoints"], "training_data": training_data(configs),
                         "seeds": sorted({c.get("seed") for c in configs if c.get("seed") is not None})},
                   command=command)


def _export_ensemble(role: str, spec: dict, out: Path, exported: dict, provenance: list) -> dict:
    if (spec.get("stack") or {}).get("seg_members"):
        raise ModelFolderError(f"{spec.get('path', role)}: a stack blend reading segmenter features "
                               "(ensemble.py --stack-seg-runs) is not exported to model folders; run its spec "
                               "YAML with infer.py, or stack the classifiers alone")
    entry = {k: copy.deepcopy(v) for k, v in spec.items() if k not in SPEC_DROP}
    for block, key in (("oof", "folds_table"), ("postprocess_search", "table")):
        if isinstance(entry.get(block), dict):
            entry[block].pop(key, None)  # side files of the spec, not exported
    entry["members"] = []
    for member in spec["members"]:
        item = {k: copy.deepcopy(v) for k, v in member.items()
                if k not in ("checkpoints", "checkpoint_paths", "run")}
        item["checkpoints"] = []
        for k, source in enumerate(member["checkpoint_paths"]):
            if source not in exported:
                exported[source] = f"weights/{_safe_name(role, member['name'], k, exported)}.safetensors"
            ckpt, info = _export_checkpoint(source, out / exported[source])
            item["checkpoints"].append({"file": exported[source], **info})
            provenance.append({"role": role, "member": member["name"], "source": source,
                               "source_sha256": sha256(source), "file": exported[source],
                               "epoch": ckpt.get("epoch"), "best_metric": ckpt.get("best_metric"),
                               "seed": ckpt.get("seed"), "versions": ckpt.get("versions"),
                               "config": ckpt["config"]})
        item["input"] = {k: item["checkpoints"][0]["config"].get(k, 0 if k == "neighbours" else None)
                         for k in INPUT_KEYS}
        item["architecture"] = {"task": spec["task"], "model": item["checkpoints"][0]["config"]["model"],
                                "encoder": item["checkpoints"][0]["config"].get("encoder")
                                if spec["task"] == "seg" else None,
                                "num_outputs": item["checkpoints"][0]["num_outputs"]}
        entry["members"].append(item)
    return entry


def _safe_name(role: str, member: str, k: int, exported: dict) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{role}-{member}-{k}")
    taken = {Path(v).stem for v in exported.values()}
    name, n = stem, 1
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    return name


def _export_checkpoint(source: str, target: Path) -> tuple[dict, dict]:
    """Write the weights inference loads (load_checkpoint's: EMA when kept) as safetensors."""
    ckpt = read_checkpoint(source)
    state = ckpt["ema"] if ckpt.get("ema") else ckpt["model"]
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in strip_prefixes(state).items()}
    if not target.exists():
        write_atomic(target, lambda f: f.write(save_safetensors(tensors, metadata={"format": FORMAT})))
    cfg = {k: (None if k in MACHINE_PATH_KEYS else v) for k, v in ckpt["config"].items()}
    return ckpt, {"num_outputs": int(ckpt["num_outputs"]), "config": cfg}


# --------------------------------------------------------------------------- reading


def read_model_folder(folder: str | os.PathLike, expect_sha256: str | None = None) -> dict[str, dict]:
    """{role: spec dict} of a model folder (or its model.json), after checking every recorded hash (the
    check export.py --verify makes: model.json's weights hashes, manifest.json's hash of every file, model.json
    included, so a folder without its manifest.json is refused) and, given `expect_sha256`, manifest.json's own
    sha256; ModelFolderError if not. The hashes are integrity checks, not signatures: whoever can rewrite the
    folder can rewrite them, so pin the manifest (expect_sha256) with a hash you got from elsewhere.
    A hub cache snapshot (inference/hub.py) may also hold the repository's model card: nothing reads it."""
    folder = Path(folder)
    if folder.name == MODEL_JSON and folder.is_file():
        folder = folder.parent
    path = folder / MODEL_JSON
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: no {MODEL_JSON} in it (write one with "
                               "export.py, or pass an ensemble spec YAML)")
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(model, dict) or model.get("format") != FORMAT or not isinstance(model.get("files"), dict):
        raise ModelFolderError(f"{path}: not a strokekit model folder (format {FORMAT!r} with a files table)")
    unused = hub_card_files(folder)
    problems = [p for p in _hash_problems(folder, model) if p.split(":", 1)[0] not in unused]
    if problems:
        raise ModelFolderError(f"{folder}: refused, its files do not match their recorded sha256 — "
                               + "; ".join(problems) + ". Export the folder again (export.py) or copy it whole")
    if expect_sha256 is not None:
        expected, actual = str(expect_sha256).strip().lower(), sha256(folder / MANIFEST)
        if actual != expected:
            raise ModelFolderError(f"{folder}: refused, its {MANIFEST} has sha256 {actual}, not the expected "
                                   f"{expected}: another export than the one pinned, or a changed folder")
    ensembles = model.get("ensembles") or {}
    if not ensembles or set(ensembles) - set(ROLES):
        raise ModelFolderError(f"{path}: ensembles must be a non-empty mapping with roles among {list(ROLES)}")
    return {role: _as_spec(entry, folder, path, role) for role, entry in ensembles.items()}


def hub_card_files(folder: Path) -> set[str]:
    """In a hub cache snapshot (<cache>/models--org--name/snapshots/<commit>/), the top-level files beside
    model.json and manifest.json (README.md, the model card, ...): nothing reads them. Elsewhere none."""
    if folder.parent.name != "snapshots" or not folder.parent.parent.name.startswith("models--"):
        return set()
    return {p.name for p in folder.iterdir() if p.is_file() and p.name not in (MODEL_JSON, MANIFEST)}


def _hash_problems(folder: Path, model: dict) -> list[str]:
    """model.json's weights hashes, weights files it does not list, and every file against manifest.json
    (which must be there: without it nothing vouches for model.json)."""
    problems = []
    for name, digest in model["files"].items():
        target = folder / str(name)
        if not target.is_file():
            problems.append(f"{name}: listed in {MODEL_JSON} but missing")
        elif sha256(target) != digest:
            problems.append(f"{name}: sha256 differs from {MODEL_JSON} (the file was changed or damaged)")
    problems += [f"{p.relative_to(folder).as_posix()}: not listed in {MODEL_JSON}"
                 for p in sorted((folder / "weights").glob("*")) if p.relative_to(folder).as_posix()
                 not in model["files"]]
    if not (folder / MANIFEST).is_file():
        return problems + [f"{MANIFEST}: missing (export.py writes one; without it nothing vouches for "
                           f"{MODEL_JSON})"]
    try:
        manifest = read_manifest(folder)
    except ValueError:
        return problems + [f"{MANIFEST}: not a readable manifest"]
    if manifest["files"].get(MODEL_JSON) != sha256(folder / MODEL_JSON):
        problems.append(f"{MODEL_JSON}: sha256 differs from {MANIFEST} (edited after export)")
    named = {p.split(":", 1)[0] for p in problems}
    problems += [p for p in verify_files(folder, manifest["files"], MANIFEST) if p.split(":", 1)[0] not in named]
    return problems


def _as_spec(entry: dict, folder: Path, path: Path, role: str) -> dict:
    """A model.json ensemble as the spec dict read_spec would give (checkpoint_paths inside the folder)."""
    spec = copy.deepcopy(entry)
    spec["format"] = "strokekit-ensemble-v1"
    for member in spec.get("members") or []:
        checkpoints = member.get("checkpoints") or []
        member["checkpoints"] = [c.get("file") for c in checkpoints]
        member["checkpoint_models"] = checkpoints
        member["checkpoint_paths"] = [str(_inside(folder, c.get("file"), path)) for c in checkpoints]
    validate_spec(spec, f"{path} ({role})")
    spec["path"] = str(path.resolve())
    spec["role"], spec["model_folder"] = role, str(folder.resolve())
    return spec


def _inside(folder: Path, name, path: Path) -> Path:
    """The file `name` names, which must lie inside the folder as named (no `..` or absolute path out of it);
    the file itself may be a link, as a hub cache's snapshot files are (links to its blobs)."""
    base = folder.absolute()
    named = Path(os.path.normpath(base / str(name)))
    if not isinstance(name, str) or not named.is_relative_to(base) or not named.is_file():
        raise ModelFolderError(f"{path}: weights file {name!r} is not a file inside the model folder")
    return named.resolve()


def load_weights(path: str | os.PathLike, cfg: dict, num_outputs: int, device) -> torch.nn.Module:
    """Rebuild a member's model from its config and a safetensors file (as models.load_checkpoint does)."""
    from strokekit.models.registry import build_model

    model = build_model(dict(cfg, pretrained=False, weights=None), num_outputs=num_outputs)
    try:
        state = load_safetensors(Path(path).read_bytes())
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - damaged file or weights of another architecture
        raise WeightsError(f"{path}: weights do not load into {cfg['model']} (in_chans={cfg['in_chans']}, "
                           f"{num_outputs} outputs): {type(err).__name__}: {err}") from None
    return model.to(device).eval()
