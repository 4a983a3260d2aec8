"""manifest.json beside every submission and model folder: provenance whose hashes are the real files'
hashes, and `score.py --check` that passes a fresh submission and fails a changed, added or removed file."""
import json
import shutil

import pytest
import yaml
from phantom_loop import run_main

from strokekit.inference import manifest as mf
from strokekit.models.checkpoint import read_checkpoint
from strokekit.ensembling.spec import read_spec


def test_submission_manifest_records_what_made_it(shipped, loop, seg_spec, type_spec):
    out = shipped.subs[("spec", 2)]
    record = json.loads((out / "manifest.json").read_text())
    assert record["files"] == {p.name: mf.sha256(p) for p in out.iterdir() if p.name != "manifest.json"}
    assert record["packages"]["safetensors"] and record["packages"]["torch"] and record["kit_version"]
    assert set(record["git"]) == {"commit", "dirty"} and record["time"] and "--phase" in record["command"]
    for key, spec_path in (("spec", seg_spec[0]), ("type_spec", type_spec)):
        assert record[key]["sha256"] == mf.sha256(spec_path)
        members = read_spec(spec_path)["members"]
        checkpoints = [c for m in record[key]["members"] for c in m["checkpoints"]]
        assert [c["path"] for c in checkpoints] == [p for m in members for p in m["checkpoint_paths"]]
        for c in checkpoints:
            assert c["sha256"] == mf.sha256(c["path"]) and c["config"] == read_checkpoint(c["path"])["config"]
    seeds = {yaml.safe_load((loop.root / "configs" / f"{name}.yaml").read_text())["seed"]
             for name in ("seg_a", "seg_b", "type_a")}
    assert record["seeds"] and set(record["seeds"]) <= seeds
    [data] = record["training_data"]
    assert data["folds_sha256"] == mf.sha256(loop.data / "folds.csv")
    assert data["data_index_sha256"] == mf.sha256(loop.data / ".strokekit" / "index.csv")
    assert len(record["test_inputs"]["files_sha256"]) == 64 and record["test_inputs"]["read"] == ["png"]
    moved = json.loads((shipped.subs[("model", 2)] / "manifest.json").read_text())
    assert moved["training_data"] == record["training_data"]  # carried over from the model folder's manifest
    assert moved["test_inputs"] == record["test_inputs"]


def test_model_folder_manifest_verifies(shipped, stroke_spec):
    record, problems = mf.verify_folder(shipped.model)
    assert problems == [] and record["kind"] == "model_folder"
    assert set(record["files"]) == {"model.json"} | {f"weights/{p.name}" for p in (shipped.model / "weights").iterdir()}
    assert record["exported_from"]["stroke"]["sha256"] == mf.sha256(stroke_spec[0])
    for c in record["checkpoints"]:
        assert c["source_sha256"] == mf.sha256(c["source"]) and c["config"] == read_checkpoint(c["source"])["config"]


@pytest.mark.parametrize("phase", [1, 2])
def test_score_check_fails_a_changed_added_or_removed_file(shipped, tmp_path, capsys, phase):
    fresh = shipped.subs[("model", phase)]
    assert run_main("score", "--check", fresh, "--size", 64, 64) == 0
    assert "files match manifest.json" in capsys.readouterr().out
    target = "asama1.txt" if phase == 1 else sorted(p.name for p in fresh.glob("*.png"))[0]

    def changed(folder):
        if phase == 1:  # still a valid phase-1 file: one label flipped
            lines = (folder / target).read_bytes().split(b"\r\n")
            lines[1] = lines[1][:-1] + (b"0" if lines[1].endswith(b"1") else b"1")
            (folder / target).write_bytes(b"\r\n".join(lines))
        else:
            other = next(p for p in folder.glob("*.png") if p.read_bytes() != (folder / target).read_bytes())
            shutil.copyfile(other, folder / target)  # still a valid mask, another image's

    edits = {"changed": (changed, "differs from manifest.json"),
             "added": (lambda f: (f / "notes.txt").write_text("x"), "notes.txt: not listed"),
             "removed": (lambda f: (f / ("probs.csv" if phase == 1 else "types.csv")).unlink(), "but missing")}
    for name, (edit, message) in edits.items():
        folder = tmp_path / name
        shutil.copytree(fresh, folder)
        edit(folder)
        assert run_main("score", "--check", folder, "--size", 64, 64) == 1, name
        assert message in capsys.readouterr().err


def test_git_info_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert mf.git_info() == {"commit": None, "dirty": None}
